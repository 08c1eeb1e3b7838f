"""Scheduled posting: APScheduler with its jobs in the database, a ledger per period, review."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from sqlalchemy import create_engine, select, text

from bots.core.adapter import Capabilities
from bots.core.config import ScheduleConfig
from bots.core.events import ChannelKind, ChannelRef, Outbound
from bots.core.migrations import TABLES_LOCK
from bots.core.storage import Database, LedgerEntry
from bots.plugins import Plugin
from bots.plugins.api import scheduled
from bots.plugins.jobs import JobContext
from bots.scheduler.review import ReviewError
from bots.scheduler.service import job_store
from bots.testing import FakeAdapter, FakeLLM

MORNING = {
    "id": "morning",
    "job": "bots.testing.jobs:post_text",
    "target": "fake:g1",
    "cron": "0 9 * * *",
    "timezone": "Europe/Berlin",
    "options": {"text": "Guten Morgen, {when}"},
}
JOB = "testbot:morning"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


async def start(harness: Any, data_dir: Any, *schedules: dict[str, Any], **kwargs: Any) -> Any:
    return await harness(
        data_dir=data_dir, adapter=FakeAdapter(), bot={"schedules": list(schedules)}, **kwargs
    )


async def run_due(h: Any) -> None:
    """Let the scheduler look at the (travelled) clock and finish what fell due."""
    service = h.host.control.scheduling
    service.scheduler.wakeup()
    await asyncio.sleep(0.05)
    await service.idle()
    await h.drain()


def posted(h: Any, chat: str = "g1") -> list[str]:
    return [o.text for o in h.adapter.sent if o.target.id == chat]


async def ledger(h: Any) -> list[tuple[str, str]]:
    async with h.host.db.session() as session:
        rows = await session.scalars(select(LedgerEntry).order_by(LedgerEntry.period))
        return [(row.period, row.state) for row in rows]


async def test_cron_fires_at_local_time_across_a_dst_change(harness, tmp_path):
    with time_machine.travel(at(2026, 3, 28, 6, 0), tick=True) as clock:
        h = await start(harness, tmp_path / "var", MORNING)
        job = h.host.control.scheduling.scheduler.get_job(JOB)
        assert job.next_run_time == at(2026, 3, 28, 8, 0)  # 09:00 CET
        clock.move_to(at(2026, 3, 28, 8, 0, 5))
        await run_due(h)
        assert posted(h) == ["Guten Morgen, 2026-03-28 09:00 CET"]
        job = h.host.control.scheduling.scheduler.get_job(JOB)
        assert job.next_run_time == at(2026, 3, 29, 7, 0)  # 09:00 CEST, the day the clocks go forward
        clock.move_to(at(2026, 3, 29, 7, 0, 5))
        await run_due(h)
        assert posted(h)[-1] == "Guten Morgen, 2026-03-29 09:00 CEST"
        assert len(posted(h)) == 2


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_pause_and_resume(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        h = await start(harness, tmp_path / "var", MORNING)
        service = h.host.control.scheduling
        service.scheduler.pause_job(JOB)
        clock.move_to(at(2026, 5, 4, 7, 0, 5))  # 09:00 CEST
        await run_due(h)
        assert posted(h) == []
        service.scheduler.resume_job(JOB)
        assert service.scheduler.get_job(JOB).next_run_time == at(2026, 5, 5, 7, 0)
        clock.move_to(at(2026, 5, 5, 7, 0, 5))
        await run_due(h)
        assert posted(h) == ["Guten Morgen, 2026-05-05 09:00 CEST"]


@pytest.mark.parametrize(
    ("missed", "down_until", "expected"),
    [
        ("skip", at(2026, 5, 4, 7, 20), []),
        ("run_once_late", at(2026, 5, 4, 7, 20), ["Guten Morgen, 2026-05-04 09:00 CEST"]),
        ("run_once_late", at(2026, 5, 4, 9, 30), []),  # beyond the 60-minute grace
        ("catch_up", at(2026, 5, 6, 7, 20), [f"Guten Morgen, 2026-05-0{d} 09:00 CEST" for d in (4, 5, 6)]),
    ],
)
async def test_runs_missed_while_the_host_was_down(harness, tmp_path, missed, down_until, expected):
    schedule = {**MORNING, "missed": missed}
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        first = await start(harness, tmp_path / "var", schedule)
        await first.host.stop()
        clock.move_to(down_until)
        second = await start(harness, tmp_path / "var", schedule)
        await run_due(second)
        assert posted(second) == expected
        states = {state for _, state in await ledger(second)}
        assert states <= {"posted", "missed"} and ("missed" in states) == (not expected)


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_a_restart_before_the_fire_time_keeps_the_schedule(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        first = await start(harness, tmp_path / "var", MORNING)
        await first.host.stop()
        clock.move_to(at(2026, 5, 4, 6, 30))
        second = await start(harness, tmp_path / "var", MORNING)
        assert second.host.control.scheduling.scheduler.get_job(JOB).next_run_time == at(2026, 5, 4, 7, 0)
        await run_due(second)
        assert posted(second) == []  # not due yet
        clock.move_to(at(2026, 5, 4, 7, 0, 5))
        await run_due(second)
        assert len(posted(second)) == 1


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_two_hosts_on_one_database_post_a_period_once(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        one = await start(harness, tmp_path / "var", MORNING)
        two = await start(harness, tmp_path / "var", MORNING)
        for h in (one, two):  # only the four runs below contend; the schedulers' own firing stays out
            h.host.control.scheduling.scheduler.pause()
        clock.move_to(at(2026, 5, 4, 7, 0, 5))
        run = datetime(2026, 5, 4, 7, 0, tzinfo=UTC)
        results = await asyncio.gather(
            *(h.host.control.scheduling.run(JOB, _job_kwargs(h), run) for h in (one, two, one, two))
        )
        await one.drain()
        await two.drain()
        assert sorted(results) == ["already", "already", "already", "posted"]
        assert len(posted(one)) + len(posted(two)) == 1
        assert await ledger(one) == [("2026-05-04T07:00:00+00:00", "posted")]


async def test_a_host_starting_while_another_posts_leaves_that_period_alone(harness, postgres_url):
    """On one PostgreSQL, a period claimed by a live host is not an interrupted one to take over."""
    slow = {**MORNING, "job": "bots.testing.jobs:ask_the_model", "options": {"prompt": "news?"}}
    one = await start(harness, None, slow, database_url=postgres_url, llm=FakeLLM(default="news", delay_s=2))
    run = datetime.now(UTC).replace(microsecond=0)
    posting = asyncio.create_task(one.host.control.scheduling.run(JOB, _job_kwargs(one), run))
    for _ in range(500):  # until the first host has claimed the period and is writing the post
        if await ledger(one):
            break
        await asyncio.sleep(0.01)
    assert await ledger(one) == [(run.isoformat(), "claimed")], "the first host never claimed the period"
    two = await start(harness, None, slow, database_url=postgres_url, llm=FakeLLM(default="news again"))
    await two.host.control.scheduling.idle()  # its start looked at the periods left claimed
    assert await posting == "posted"
    await one.drain()
    await two.drain()
    assert posted(one) == ["news"]
    assert posted(two) == []
    assert await ledger(one) == [(run.isoformat(), "posted")]


async def test_hosts_starting_together_create_the_job_tables_one_at_a_time(postgres_url):
    """APScheduler makes its tables at start; on one PostgreSQL a host waits for the other's."""
    db = Database(postgres_url)
    other = create_engine(db.sync_url).connect()  # another host, creating its tables right now
    other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": TABLES_LOCK})
    other.commit()
    released = threading.Event()

    def done_creating() -> None:
        released.set()
        other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TABLES_LOCK})
        other.commit()

    threading.Timer(0.3, done_creating).start()
    try:
        async with job_store(db, ["testbot"]) as scheduler:
            assert released.is_set(), "the job store was created while another host held the lock"
            assert scheduler.get_jobs(jobstore="testbot") == []
    finally:
        other.close()
        await db.close()


def _job_kwargs(h: Any) -> dict[str, Any]:
    return h.host.control.scheduling.scheduler.get_job(JOB).kwargs


REVIEWED = {**MORNING, "review": True, "review_hours": 2}


async def reviewed_host(harness: Any, tmp_path: Any, clock: Any, **schedule: Any) -> Any:
    review = {"review_chats": ["fake:ops"]}
    h = await start(harness, tmp_path / "var", {**REVIEWED, **schedule}, scheduler=review)
    clock.move_to(at(2026, 5, 4, 7, 0, 5))
    await run_due(h)
    return h


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_review_approve_posts_only_the_approved_text(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        h = await reviewed_host(harness, tmp_path, clock)
        service = h.host.control.scheduling
        assert posted(h) == []  # nothing goes out before an operator says so
        [asked] = posted(h, "ops")
        assert asked.startswith("Draft #1 of job testbot:morning") and "/review approve 1" in asked
        await service.edit(1, "Guten Morgen! (edited)", by="fake:op")
        assert await service.approve(1, by="fake:op") == "posted"
        assert posted(h) == ["Guten Morgen! (edited)"]
        assert await ledger(h) == [("2026-05-04T07:00:00+00:00", "posted")]
        with pytest.raises(ReviewError, match="is posted"):
            await service.approve(1, by="fake:op")


async def test_review_reject_and_regenerate(harness, tmp_path):
    llm = FakeLLM(responses=["first draft", "second draft"])
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        h = await reviewed_host(harness, tmp_path, clock, job="bots.testing.jobs:ask_the_model")
        h.host.control.scheduling.bots["testbot"].llm = llm
        service = h.host.control.scheduling
        draft = await service.regenerate(1, by="fake:op")
        assert draft.versions[-1] == "first draft" and draft.chosen == len(draft.versions) - 1
        await service.reject(1, by="fake:op")
        assert posted(h) == []
        assert await ledger(h) == [("2026-05-04T07:00:00+00:00", "rejected")]


async def test_a_draft_not_approved_in_time_is_not_posted(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        h = await reviewed_host(harness, tmp_path, clock)
        service = h.host.control.scheduling
        clock.move_to(at(2026, 5, 4, 9, 1))  # two hours after the run
        await service.tick()
        assert await ledger(h) == [("2026-05-04T07:00:00+00:00", "expired")]
        with pytest.raises(ReviewError, match="expired"):
            await service.approve(1, by="fake:op")
        assert posted(h) == []


async def test_config_jobs_are_reconciled_at_start(harness, tmp_path):
    evening = {**MORNING, "id": "evening", "cron": "0 20 * * *"}
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True):
        first = await start(harness, tmp_path / "var", MORNING, evening)
        first.host.control.scheduling.add("testbot", ScheduleConfig.model_validate({**MORNING, "id": "mine"}))
        await first.host.stop()
        moved = {**MORNING, "cron": "30 8 * * *"}
        noon = {**MORNING, "id": "noon", "cron": "0 12 * * *"}
        second = await start(harness, tmp_path / "var", moved, noon)
        jobs = {job.id: job for job in second.host.control.scheduling.jobs()}
        assert sorted(jobs) == ["testbot:mine", "testbot:morning", "testbot:noon"]  # an operator's job stays
        assert jobs["testbot:morning"].next_run == at(2026, 5, 4, 6, 30)  # 08:30 CEST


async def _interrupt(harness: Any, data_dir: Any, period: str, *, recorded: bool) -> None:
    """Leave a period claimed (and, if ``recorded``, its post half-sent) as a dying host would."""
    h = await start(harness, data_dir, MORNING)
    service = h.host.control.scheduling
    await service.ledger.claim(JOB, period, "testbot")
    if recorded:  # the first part went out, then the host died before the second
        h.adapter.capabilities = Capabilities(max_length=12)
        send = h.adapter.send

        async def first_only(outbound: Outbound) -> Any:
            if h.adapter.sent:
                raise asyncio.CancelledError  # the host died
            return await send(outbound)

        h.adapter.send = first_only
        post = Outbound(ChannelRef("fake", "g1", ChannelKind.GROUP), "Part one. Part two.")
        with pytest.raises(asyncio.CancelledError):
            await h.host.send("testbot", post, key=f"post:{JOB}:{period}")
    h.host.stop_grace_s = 0
    await h.host.stop()


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_an_interrupted_period_is_written_again_at_start(harness, tmp_path):
    period = "2026-05-04T07:00:00+00:00"
    with time_machine.travel(at(2026, 5, 4, 7, 1), tick=True):
        await _interrupt(harness, tmp_path / "var", period, recorded=False)
        again = await start(harness, tmp_path / "var", MORNING)
        await again.host.control.scheduling.idle()
        await again.drain()
        assert posted(again) == ["Guten Morgen, 2026-05-04 09:00 CEST"]
        assert await ledger(again) == [(period, "posted")]


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_an_interrupted_half_sent_post_is_finished_not_rewritten(harness, tmp_path):
    period = "2026-05-04T07:00:00+00:00"
    with time_machine.travel(at(2026, 5, 4, 7, 1), tick=True):
        await _interrupt(harness, tmp_path / "var", period, recorded=True)
        again = await start(harness, tmp_path / "var", MORNING)
        await again.host.control.scheduling.idle()
        await again.drain()
        assert posted(again) == ["Part two."]  # the rest of the post, not a new one
        assert await ledger(again) == [(period, "posted")]


class Almanac(Plugin):
    name = "almanac"

    @scheduled(id="weather", cron="0 6 * * *", timezone="Asia/Shanghai", target="fake:g1")
    async def weather(self, ctx: JobContext) -> str:
        return f"{self.ctx.plugin}: fair weather on {ctx.scheduled_at:%m-%d}"


async def test_a_plugin_declares_a_job(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 3, 21, 0), tick=True) as clock:
        h = await harness(data_dir=tmp_path / "var", plugins=[Almanac])
        assert [job.id for job in h.host.control.scheduling.jobs()] == ["testbot:almanac.weather"]
        clock.move_to(at(2026, 5, 3, 22, 0, 5))  # 06:00 in Shanghai
        await run_due(h)
        assert posted(h) == ["almanac: fair weather on 05-04"]


async def test_run_now_posts_outside_the_schedule(harness, tmp_path):
    h = await start(harness, tmp_path / "var", MORNING)
    assert await h.host.control.scheduling.run_now(JOB) == "posted"
    await h.drain()
    assert len(posted(h)) == 1
    with pytest.raises(LookupError):
        await h.host.control.scheduling.run_now("testbot:nothing")


def test_bad_schedules_are_config_errors():
    from pydantic import ValidationError

    from bots.core.config import ScheduleConfig

    for bad, words in [
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"job": "not a ref"}, "module:function"),
        ({"every_minutes": 5}, "exactly one of cron or every_minutes"),
        ({"target": "g1"}, "canonical id"),
    ]:
        with pytest.raises(ValidationError, match=words):
            ScheduleConfig.model_validate({**MORNING, **bad})


async def test_a_host_with_other_bots_leaves_these_jobs_alone(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True):
        first = await start(harness, tmp_path / "var", MORNING)
        await first.host.stop()
        other = await harness(data_dir=tmp_path / "var", adapter=FakeAdapter(), bot={"name": "chatty"})
        assert other.host.control.scheduling.jobs() == []
        await other.host.stop()
        again = await start(harness, tmp_path / "var", MORNING)
        assert [job.id for job in again.host.control.scheduling.jobs()] == [JOB]
        assert again.host.control.scheduling.scheduler.get_job(JOB).next_run_time == at(2026, 5, 4, 7, 0)


async def test_a_new_time_zone_moves_the_job(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 0, 0), tick=True):
        first = await start(harness, tmp_path / "var", MORNING)  # 09:00 in Berlin = 07:00 UTC
        await first.host.stop()
        tokyo = await start(harness, tmp_path / "var", {**MORNING, "timezone": "Asia/Tokyo"})
        assert tokyo.host.control.scheduling.scheduler.get_job(JOB).next_run_time == at(2026, 5, 5, 0, 0)


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_approval_racing_the_tick_posts_once(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 4, 6, 0), tick=True) as clock:
        h = await reviewed_host(harness, tmp_path, clock)
        service = h.host.control.scheduling
        results = await asyncio.gather(service.approve(1, by="fake:op"), service.tick(), service.tick())
        await h.drain()
        assert results[0] in ("posted", "already being posted")
        assert posted(h) == ["Guten Morgen, 2026-05-04 09:00 CEST"]
        assert await ledger(h) == [("2026-05-04T07:00:00+00:00", "posted")]


async def test_a_disabled_plugin_posts_nothing(harness, tmp_path):
    with time_machine.travel(at(2026, 5, 3, 21, 0), tick=True) as clock:
        h = await harness(
            data_dir=tmp_path / "var", plugins=["basics", "admin", Almanac], roles={"operators": ["fake:op"]}
        )
        await h.ask("/plugins disable almanac", user="op")
        clock.move_to(at(2026, 5, 3, 22, 0, 5))
        await run_due(h)
        assert posted(h) == []
        assert [state for _, state in await ledger(h)] == ["skipped"]
