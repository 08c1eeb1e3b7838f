"""The state store on SQLite and PostgreSQL: the same behaviour through one SQLAlchemy URL,
migrations on both, a database made before migrations adopted with its data, secrets kept out of
the config file and the logs."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select
from typer.testing import CliRunner

from bots.cli import app
from bots.core.audit import AuditLog
from bots.core.config import AppConfig, ConfigError, Secrets, load_config
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, UserRef
from bots.core.groupcommit import GroupCommit
from bots.core.history import History
from bots.core.migrations import current, head
from bots.core.permissions import Permissions, Role
from bots.core.quota import Quotas, QuotaStore
from bots.core.storage import (
    DATABASE_URL_ENV,
    Base,
    ChatTurn,
    Database,
    InboxEntry,
    KeyValueStore,
    database_url,
    masked,
    sqlite_url,
    to_json,
)


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await database.start()
    yield database
    await database.close()


@pytest.fixture
async def writes(db):
    group = GroupCommit(db)
    await group.start()
    yield group
    await group.close()


async def test_history_keeps_utc_moments_whatever_zone_they_came_in(db, writes):
    history = History(db, writes)
    berlin = timezone(timedelta(hours=2))
    said = datetime(2026, 5, 4, 9, 0, tzinfo=berlin)  # 07:00 UTC
    for minute, text in ((0, "first"), (1, "second")):
        event = MessageEvent(
            platform="fake",
            message_id=f"m{minute}",
            author=UserRef("fake", "u1", "Ada " * 100),  # a name longer than the column
            channel=ChannelRef("fake", "g1", ChannelKind.GROUP),
            text=text,
            timestamp=said + timedelta(minutes=minute),
        )
        history.record("bot", event, text)
    await writes.flush()
    rows = await history.between(
        "bot", "fake:g1", datetime(2026, 5, 4, 7, 0, tzinfo=UTC), said + timedelta(hours=1)
    )
    assert [row.text for row in rows] == ["first", "second"]
    assert [row.at.replace(tzinfo=UTC) if row.at.tzinfo is None else row.at for row in rows] == [
        datetime(2026, 5, 4, 7, 0, tzinfo=UTC),
        datetime(2026, 5, 4, 7, 1, tzinfo=UTC),
    ]
    assert (
        await history.between("bot", "fake:g1", said + timedelta(minutes=2), said + timedelta(hours=1)) == []
    )


async def test_quotas_add_up_per_user_and_day(db, writes):
    store = QuotaStore(db, writes, "bot")
    day = date(2026, 5, 4)
    store.add(day, "fake:u1", 1, 100)
    store.add(day, "fake:u1", 2, 250)  # the same row in the same transaction: added, not a duplicate
    store.add(day, "fake:u2", 1, 10)
    await writes.flush()
    store.add(day, "fake:u1", 3, 300)  # in a later transaction: added to the stored row
    await writes.flush()
    rows = {row.user: (row.messages, row.tokens) for row in await store.load(day)}
    assert rows == {"fake:u1": (6, 650), "fake:u2": (1, 10)}
    assert await store.load(day + timedelta(days=1)) == []


async def test_two_processes_of_a_bot_share_a_users_daily_quota(db, writes):
    """Workers of one bot on one database: what one counted, the other refuses."""
    day = date(2026, 5, 4)
    first, second = (
        Quotas(messages_per_day=3, today=lambda: day, store=QuotaStore(db, writes, "bot"), refresh_s=0)
        for _ in range(2)
    )
    await first.load()
    await second.load()
    first.count_message("fake:u1")
    first.count_message("fake:u1")
    second.count_message("fake:u1")
    await writes.flush()
    await first.refresh()
    assert first.over("fake:u1") == "daily message quota (3)"
    assert first.over("fake:u2") is None


async def test_audit_entries_are_cut_to_their_columns_and_redacted(db):
    log = AuditLog(db, secrets=lambda: ["hunter22"])
    await log.record(bot="bot", actor="fake:op", channel="fake:g1", command="grant", args="x", result="ok")
    await log.record(
        bot="bot",
        actor="fake:op",
        channel="fake:g1",
        command="c" * 100,
        args="key=hunter22",
        result="E" * 1000,
    )
    newest, older = await log.recent(10)
    assert (older.command, older.result) == ("grant", "ok")
    assert newest.command == "c" * 64 and newest.result == "E" * 255  # cut alike on both engines
    assert "hunter22" not in newest.args


async def test_runtime_roles_and_identity_links_persist_and_change(db):
    roles = Permissions(owners=["fake:owner"])
    await roles.load(db)
    await roles.grant("fake:ada", Role.OPERATOR, "fake:owner")
    await roles.grant("fake:ada", Role.BANNED, "fake:owner")  # a second grant replaces the first
    await roles.link("fake:ada", "ada")
    await roles.link("fake:ada", "ada-lovelace")
    again = Permissions(owners=["fake:owner"])
    await again.load(db)
    assert again.role_of("fake:ada") is Role.BANNED
    assert again.people() == {"ada-lovelace": ["fake:ada"]}
    await again.revoke("fake:ada")
    third = Permissions(owners=["fake:owner"])
    await third.load(db)
    assert third.role_of("fake:ada") is Role.MEMBER


async def test_plugin_values_are_upserted_and_keys_are_bounded(db):
    store = KeyValueStore(db, "bot/plugin")
    await store.set("counter", {"n": 1, "tags": ["a", "中文"]})
    await store.set("counter", {"n": 2})
    assert await store.get("counter") == {"n": 2}
    assert await KeyValueStore(db, "bot/other").get("counter", "none") == "none"
    with pytest.raises(ValueError, match="at most 255"):
        await store.set("k" * 256, 1)
    assert await store.keys() == ["counter"]


async def test_json_values_read_back_as_json_would_have_stored_them(db):
    """orjson writes JSON columns; what it refuses (integers past 64 bits) falls back to json, and
    what it writes otherwise (non-string keys, Chinese unescaped) reads back as before."""
    store = KeyValueStore(db, "bot/plugin")
    value = {"big": 2**70, 7: "seven", "text": '中文 and "quotes"', "nested": [1.5, None, True]}
    await store.set("value", value)
    assert await store.get("value") == json.loads(json.dumps(value))  # {"7": "seven", ...}
    assert to_json({"a": [1, "中"]}) == '{"a":[1,"中"]}' and to_json(2**70) == str(2**70)


def _drift(connection) -> list:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    ours = [d for d in compare_metadata(context, Base.metadata) if "scheduled_jobs_" not in repr(d)]
    return ours


async def test_migrations_make_exactly_the_schema_the_models_describe(db):
    async with db.engine.connect() as conn:
        assert await conn.run_sync(current) == head()
        assert await conn.run_sync(_drift) == []
    await db.start()  # again: nothing to do
    async with db.engine.connect() as conn:
        assert await conn.run_sync(current) == head()


async def test_a_database_made_before_migrations_is_adopted_with_its_data(database_url):
    """A database made by create_all (before migrations), by a version without review drafts."""
    old = Database(database_url)
    legacy = create_engine(old.sync_url)
    tables = [t for name, t in Base.metadata.tables.items() if name != "review_drafts"]
    Base.metadata.create_all(legacy, tables=tables)
    with legacy.begin() as conn:
        conn.execute(
            InboxEntry.__table__.insert(),
            {"bot": "b", "event_id": "e1", "channel": "c", "payload": {"text": "kept"}, "state": "accepted",
             "attempts": 0, "received_at": datetime(2026, 1, 1, tzinfo=UTC)},
        )  # fmt: skip
        turn = {"bot": "b", "session_id": "s", "role": "human", "author_id": "u", "author_name": "U"}
        conn.execute(
            ChatTurn.__table__.insert(), turn | {"content": "hello", "created_at": datetime(2026, 1, 1)}
        )
        assert "alembic_version" not in inspect(conn).get_table_names()
    legacy.dispose()

    await old.start()
    try:
        async with old.session() as session:
            entry = await session.get(InboxEntry, ("b", "e1"))
            assert entry is not None and entry.payload == {"text": "kept"}
            assert list(await session.scalars(select(ChatTurn.content))) == ["hello"]
        async with old.engine.connect() as conn:
            assert await conn.run_sync(current) == head()
            assert await conn.run_sync(_drift) == []  # the missing table and its index made too
    finally:
        await old.close()


def test_the_url_comes_from_the_environment_or_the_config_never_a_password_in_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.delenv("BOTS_DATABASE_PASSWORD", raising=False)
    assert str(database_url(None, tmp_path)) == sqlite_url(tmp_path)
    configured = "postgresql+asyncpg://bots@db.example:5432/bots"
    assert database_url(configured, tmp_path).password is None
    monkeypatch.setenv("BOTS_DATABASE_PASSWORD", "s3cret-pw")
    with_password = database_url(configured, tmp_path)
    assert with_password.password == "s3cret-pw"
    assert masked(with_password) == "postgresql+asyncpg://bots:***@db.example:5432/bots"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+asyncpg://ops:other-pw@elsewhere/state")
    assert database_url(configured, tmp_path).host == "elsewhere"

    secrets = Secrets()
    db = Database.for_config(AppConfig(database_url=configured, data_dir=tmp_path), secrets)
    assert "other-pw" in secrets.handed_out  # so the log filter redacts it
    assert "other-pw" not in repr(db)

    toml = tmp_path / "bots.toml"
    toml.write_text('database_url = "postgresql+asyncpg://bots:in-the-file@db/bots"\n')
    with pytest.raises(ConfigError, match="holds a password") as caught:
        load_config(toml)
    assert "in-the-file" not in str(caught.value)
    monkeypatch.delenv(DATABASE_URL_ENV)
    toml.write_text('database_url = "mysql+aiomysql://bots@db/bots"\n')  # not an engine of ours
    with pytest.raises(ConfigError, match="not supported"):
        Database.for_config(load_config(toml), Secrets())


async def test_the_log_shows_the_url_without_its_password(postgres_url, caplog, monkeypatch):
    secret_url = postgres_url.replace("postgres@", "postgres:pw-never-logged@")  # trust auth ignores it
    db = Database(secret_url)
    with caplog.at_level(logging.INFO, logger="bots.storage"):
        await db.start()
    await db.close()
    assert "postgres:***@" in caplog.text
    assert "pw-never-logged" not in caplog.text


def test_bots_db_upgrade_migrates_the_configured_database(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv(DATABASE_URL_ENV, database_url)
    config = tmp_path / "bots.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    result = CliRunner().invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"at revision {head()}" in result.output
    engine = create_engine(Database(database_url).sync_url)
    with engine.connect() as conn:
        assert current(conn) == head()
        assert "inbox" in inspect(conn).get_table_names()
    engine.dispose()


def test_the_sqlite_file_lives_in_the_data_dir_by_default(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    db = Database.for_config(AppConfig(data_dir=tmp_path / "var"), Secrets())
    assert db.dialect == "sqlite" and db.url.database == str(tmp_path / "var" / "bots.db")


def test_a_missing_driver_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as without the postgres extra
    with pytest.raises(ConfigError, match=r"persona-bots\[postgres\]"):
        Database("postgresql+asyncpg://bots@db/bots")


def test_bots_db_upgrade_names_a_missing_driver(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+asyncpg://bots:s3cr3t-pw@db.example/bots")
    config = tmp_path / "bots.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    result = CliRunner().invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 1
    assert "persona-bots[postgres]" in result.output and "s3cr3t-pw" not in result.output
    assert "bots:***@db.example" in result.output


async def test_doctor_checks_the_database_is_reachable_and_current(database_url, tmp_path, monkeypatch):
    from bots.doctor import _database
    from bots.testing.servers import free_port

    monkeypatch.setenv(DATABASE_URL_ENV, database_url)
    config = AppConfig(data_dir=tmp_path)
    before = _database(config, Secrets())
    assert before.status == ("ok" if database_url.startswith("sqlite") else "warn"), before
    db = Database(database_url)
    await db.start()
    await db.close()
    after = _database(config, Secrets())
    assert (after.status, after.detail.endswith(f"(schema {head()})")) == ("ok", True), after
    monkeypatch.setenv(DATABASE_URL_ENV, f"postgresql+asyncpg://bots:pw-x@127.0.0.1:{free_port()}/none")
    down = _database(config, Secrets())
    assert down.status == "fail" and "cannot connect" in down.detail and "pw-x" not in down.detail


async def test_a_failed_quota_refresh_keeps_the_counts_and_the_message(db, writes, caplog):
    """The refresh runs on the message's path: a database that does not answer for a moment
    must not fail the message (the pipeline would drop it, and a worker acknowledge it unanswered)."""
    day = date(2026, 5, 4)
    store = QuotaStore(db, writes, "bot")
    quotas = Quotas(messages_per_day=2, today=lambda: day, store=store, refresh_s=0)
    await quotas.load()
    quotas.count_message("fake:u1")
    await writes.flush()
    await db.close()  # the database goes away
    broken = Database("postgresql+asyncpg://bots@127.0.0.1:9/none")  # nothing listens there
    store._db = broken
    try:
        await quotas.refresh()
    finally:
        await broken.close()
    assert "quota totals failed" in caplog.text
    assert quotas.over("fake:u1") is None  # its own count kept
    quotas.count_message("fake:u1")
    assert quotas.over("fake:u1") == "daily message quota (2)"
