"""Operators steer scheduled posts: chat admin commands and the `bots jobs` / `bots review` CLI."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from typer.testing import CliRunner

from bots.cli import app
from bots.core.permissions import NOT_ALLOWED
from bots.testing import FakeAdapter

MORNING = {
    "id": "morning",
    "job": "bots.testing.jobs:post_text",
    "target": "fake:g1",
    "cron": "0 9 * * *",
    "timezone": "Asia/Shanghai",
    "options": {"text": "早上好"},
}
ROLES = {"operators": ["fake:op"]}


async def operated(harness, tmp_path: Path, **schedule):
    return await harness(
        data_dir=tmp_path / "var",
        adapter=FakeAdapter(),
        plugins=["basics", "admin"],
        roles=ROLES,
        bot={"schedules": [{**MORNING, **schedule}]},
        scheduler={"review_chats": ["fake:dm-op"]},
    )


def texts(outbounds) -> list[str]:
    return [o.text for o in outbounds]


async def test_jobs_commands_for_operators(harness, tmp_path):
    h = await operated(harness, tmp_path)
    [listing] = texts(await h.ask("/jobs", user="op"))
    assert listing.startswith("testbot:morning: bots.testing.jobs:post_text cron[")
    assert listing.endswith(" 09:00 +08:00")  # the cron's hour, in its zone, offset shown
    assert texts(await h.ask("/jobs pause testbot:morning", user="member")) == [NOT_ALLOWED]
    assert texts(await h.ask("/jobs pause testbot:morning", user="op")) == ["testbot:morning: paused"]
    assert "paused" in texts(await h.ask("/jobs", user="op"))[0]
    assert texts(await h.ask("/jobs resume testbot:morning", user="op")) == ["testbot:morning: resumed"]
    replies = texts(await h.ask("/jobs run testbot:morning", user="op"))
    assert replies == ["早上好", "testbot:morning: posted"]  # the post, then the answer
    assert texts(await h.ask("/jobs run testbot:nope", user="op")) == ["No job 'testbot:nope'. Try /jobs."]
    add = '/jobs add evening bots.testing.jobs:post_text fake:g2 "0 21 * * *" Asia/Shanghai'
    assert texts(await h.ask(add, user="op")) == ["testbot:evening: added"]
    assert [j.id for j in h.host.control.scheduling.jobs()] == ["testbot:evening", "testbot:morning"]
    [bad] = texts(await h.ask('/jobs add x bots.testing.jobs:post_text fake:g2 "99 * * * *"', user="op"))
    assert bad.startswith("bad cron expression '99 * * * *'")


async def test_review_in_chat_approve_with_a_chosen_version(harness, tmp_path):
    h = await operated(harness, tmp_path, review=True)
    service = h.host.control.scheduling
    assert await service.run_now("testbot:morning") == "review"
    await h.drain()
    [draft] = texts(h.adapter.take_sent())
    assert draft.startswith("Draft #1") and "早上好" in draft  # sent to the review chat
    [shown] = texts(await h.ask("/review edit 1 早上好，今天有雾", user="op"))
    assert "(version 2 of 2)" in shown and "今天有雾" in shown
    assert texts(await h.ask("/review approve 1 1", user="op")) == ["早上好", "draft #1: posted"]
    assert texts(await h.ask("/review approve 1", user="op")) == ["draft #1 is posted"]


def run_cli(*args: str, config: Path) -> str:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


async def test_cli_jobs_and_review(harness, tmp_path):
    config = tmp_path / "bots.toml"
    config.write_text('data_dir = "var"\n[[bots]]\nname = "testbot"\npersona = "test"\n', encoding="utf-8")
    h = await operated(harness, tmp_path, review=True)
    await h.host.control.scheduling.run_now("testbot:morning")  # draft #1
    await h.host.stop()

    def cli() -> None:
        listing = run_cli("jobs", "list", config=config)
        assert "testbot:morning" in listing and "(UTC)" not in listing
        assert re.search(r"\d{4}-\d\d-\d\d 09:00 \+08:00", listing)  # 09:00 Asia/Shanghai, not 01:00
        run_cli("jobs", "pause", "testbot:morning", config=config)
        assert "paused" in run_cli("jobs", "list", config=config)
        run_cli("jobs", "resume", "testbot:morning", config=config)
        assert "#1" in run_cli("review", "list", config=config)
        run_cli("review", "approve", "1", config=config)
        failed = CliRunner().invoke(app, ["jobs", "pause", "testbot:nope", "--config", str(config)])
        assert failed.exit_code == 1 and "no job" in failed.output

    await asyncio.to_thread(cli)  # the CLI runs its own event loop
    again = await operated(harness, tmp_path, review=True)
    await again.host.control.scheduling.tick()  # what the running host does every few seconds
    await again.drain()
    assert texts(again.adapter.sent) == ["早上好"]  # the draft approved from the CLI is posted
    audit = [(e.actor.split(":")[0], e.command) for e in await again.host.audit.recent()]
    assert ("cli", "review approve") in audit and ("cli", "jobs pause") in audit
