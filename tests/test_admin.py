"""Operator commands (the built-in admin plugin), roles, linked identities and the audit log."""

from __future__ import annotations

import pytest

from bots.core.permissions import NOT_ALLOWED
from bots.core.pipeline import DM_ONLY

OWNER, OPERATOR = "fake:boss", "fake:op"
ROLES = {"owners": [OWNER], "operators": [OPERATOR]}

# (command line, who may run it)
COMMANDS = [
    ("/status", "operator"),
    ("/mute fake:g9", "operator"),
    ("/unmute fake:g9", "operator"),
    ("/ban fake:troll", "operator"),
    ("/unban fake:troll", "operator"),
    ("/say fake:g1 the fog is lifting", "operator"),
    ("/plugins", "operator"),
    ("/audit 5", "operator"),
    ("/jobs", "operator"),
    ("/review", "operator"),
    ("/persona show", "operator"),
    ("/kb stats", "operator"),
    ("/plugins disable basics", "operator"),
    ("/roles show fake:someone", "owner"),
    ("/link fake:alt wen", "owner"),
]


@pytest.fixture
async def admin(harness):
    return await harness(plugins=["basics", "admin"], roles=ROLES)


@pytest.mark.parametrize(("line", "level"), COMMANDS, ids=[c for c, _ in COMMANDS])
async def test_each_command_is_refused_to_members_and_spoofed_names(admin, line, level):
    assert [o.text for o in await admin.ask(line, user="member")] == [NOT_ALLOWED]
    spoofed = await admin.ask(line, user="mallory", user_name="boss")  # the owner's display name
    assert [o.text for o in spoofed] == [NOT_ALLOWED]
    allowed = "boss" if level == "owner" else "op"
    replies = await admin.ask(line, user=allowed)
    assert (
        replies and replies[-1].text != NOT_ALLOWED and not replies[-1].text.startswith("That command failed")
    )
    if level == "owner":
        assert [o.text for o in await admin.ask(line, user="op")] == [NOT_ALLOWED]


async def test_admin_commands_are_dm_only(admin):
    assert [o.text for o in await admin.ask("/status", user="op", chat="g1")] == [DM_ONLY]


async def test_mute_and_ban_take_effect_and_survive_a_restart(admin, harness):
    await admin.ask("/mute fake:g2", user="op")
    await admin.ask("/ban fake:troll", user="op")
    assert await admin.ask("/ping", chat="g2") == []
    assert await admin.ask("/ping", user="troll") == []
    await admin.host.stop()
    again = await harness(plugins=["basics", "admin"], roles=ROLES, data_dir=admin.config.data_dir)
    assert await again.ask("/ping", chat="g2") == []
    assert await again.ask("/ping", user="troll") == []
    await again.ask("/unmute fake:g2", user="op")
    await again.ask("/unban fake:troll", user="op")
    assert [o.text for o in await again.ask("/ping", chat="g2")] == ["pong"]
    assert [o.text for o in await again.ask("/ping", user="troll")] == ["pong"]


async def test_operators_cannot_ban_their_equals(admin):
    [reply] = await admin.ask("/ban fake:boss", user="op")
    assert "cannot ban" in reply.text
    assert [o.text for o in await admin.ask("/ping", user="boss")] == ["pong"]


async def test_owner_grants_and_revokes_operator_rights(admin):
    assert [o.text for o in await admin.ask("/status", user="newbie")] == [NOT_ALLOWED]
    assert (await admin.ask("/roles grant fake:newbie operator", user="boss"))[
        0
    ].text == "fake:newbie: operator"
    assert (await admin.ask("/status", user="newbie"))[0].text != NOT_ALLOWED
    await admin.ask("/roles revoke fake:newbie", user="boss")
    assert [o.text for o in await admin.ask("/status", user="newbie")] == [NOT_ALLOWED]


async def test_linked_identities_are_one_person(admin):
    await admin.ask("/link fake:op wen", user="boss")
    await admin.ask("/link fake:wen-phone wen", user="boss")
    [whoami] = await admin.ask("/whoami", user="wen-phone")
    assert "role: operator" in whoami.text  # the operator is recognised on their other id
    await admin.ask("/ban fake:wen-phone", user="boss")
    assert await admin.ask("/ping", user="op") == []  # and a ban covers every id of the person


async def test_say_posts_to_another_chat(admin):
    posted, confirmation = await admin.ask("/say fake:g1 the fog is lifting", user="op")
    assert posted.target.id == "g1" and posted.text == "the fog is lifting"
    assert confirmation.text == "sent to fake:g1"


async def test_audit_log_records_who_what_where_with_secrets_redacted(admin):
    token = "123456789:AAHx9abcdefghijklmnopqrstuvwxyz0123"
    await admin.ask(f"/say fake:g1 new token is {token}", user="op")
    await admin.ask("/status", user="member")  # a refusal is recorded too
    entries = await admin.host.audit.recent(10)
    say = next(e for e in entries if e.command == "say")
    assert say.actor == "fake:op" and say.channel == "fake:dm-op" and say.result == "ok"
    assert token not in say.args and "***" in say.args
    refused = next(e for e in entries if e.actor == "fake:member")
    assert refused.command == "status" and refused.result == "refused"
    [listing] = await admin.ask("/audit 5", user="op")
    assert "/say" in listing.text and token not in listing.text


def test_cli_lists_the_audit_log(tmp_path):
    import asyncio

    from typer.testing import CliRunner

    from bots.cli import app
    from bots.core.audit import AuditLog
    from bots.core.storage import Database

    async def write() -> None:
        db = Database.in_data_dir(tmp_path / "var")
        await db.start()
        log = AuditLog(db)
        await log.record(
            bot="b", actor="fake:op", channel="fake:dm-op", command="plugins", args="", result="ok"
        )
        await db.close()

    asyncio.run(write())
    config = tmp_path / "bots.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    result = CliRunner().invoke(app, ["audit", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "plugins" in result.output and "fake:op" in result.output
