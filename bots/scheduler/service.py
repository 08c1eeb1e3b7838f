"""The scheduler service: APScheduler 3 (``AsyncIOScheduler``) with its jobs in the platform's
database, and our own executor that runs every job through the ledger and the review queue.

A job is an importable async function (``kwargs["job"]``, e.g. ``"plugins.digest:post_digest"``)
plus JSON kwargs (bot, target, options, ...), never a pickled bound method; what APScheduler
stores as the job's callable is :func:`scheduled_post`, which our executor never calls directly.
The executor is told each scheduled run time, so every run is one period in the ledger: claimed
first, then written, then posted (or sent for review). Runs missed while the host was down follow
the job's policy through APScheduler's own misfire handling: ``skip`` (30 s grace),
``run_once_late`` (coalesced, within the job's grace) or ``catch_up`` (every missed run, up to
``catch_up_limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import ref_to_obj
from langchain_core.language_models import BaseChatModel

from bots.core.config import ScheduleConfig, SchedulerConfig
from bots.core.events import ChannelKind, ChannelRef, Outbound
from bots.core.host import Host
from bots.core.migrations import schema_lock
from bots.core.storage import Database, ReviewDraft, as_utc
from bots.plugins.api import SCHEDULED_TAG, Plugin, ScheduledSpec
from bots.plugins.jobs import JobContext, LoggedMessage, PersonaView, Source
from bots.scheduler.ledger import Ledger, period_key
from bots.scheduler.review import ReviewError, ReviewQueue

log = logging.getLogger("bots.scheduler")
INTERNAL = "internal"  # the store of the service's own housekeeping job (in memory)

SKIP_GRACE_S = 60  # "skip": a run this late still counts as on time (at least two ticks)
RetrieveFn = Callable[[str, int], Awaitable[list[Source]]]


@dataclass
class BotParts:
    """What jobs of one bot need: its voice, its model, its knowledge, its plugins."""

    name: str
    persona: PersonaView
    llm: BaseChatModel
    context_tokens: int
    count_tokens: Callable[[str], int]
    retrieve: RetrieveFn | None = None
    plugins: list[Plugin] = field(default_factory=list)
    schedules: list[ScheduleConfig] = field(default_factory=list)
    disabled: set[str] = field(default_factory=set)  # plugins an operator switched off


@dataclass(frozen=True)
class JobInfo:
    id: str
    func: str
    trigger: str
    next_run: datetime | None  # None: paused
    kwargs: dict[str, Any]

    @property
    def next_run_text(self) -> str:
        """The next run in the job's own time zone with its UTC offset, "2026-12-03 21:00 +08:00"
        (what the cron says, and unambiguous), or "paused"."""
        if self.next_run is None:
            return "paused"
        when = self.next_run if self.next_run.tzinfo else self.next_run.replace(tzinfo=UTC)
        offset = f"{when:%z}"
        return f"{when:%Y-%m-%d %H:%M} {offset[:3]}:{offset[3:5]}"


def jobs_table(bot: str) -> str:
    return f"scheduled_jobs_{bot}"


def make_scheduler(
    db: Database, bots: Sequence[str], executor: BaseExecutor | None = None
) -> AsyncIOScheduler:
    """One job store per bot (a table each), so a host touches only its own bots' jobs: another
    host on the same database with other bots (or ``bots chat``) never runs or removes them."""
    engine = db.sync_engine()
    stores: dict[str, Any] = {
        bot: SQLAlchemyJobStore(engine=engine, tablename=jobs_table(bot)) for bot in bots
    }
    return AsyncIOScheduler(
        jobstores={**stores, INTERNAL: MemoryJobStore()},
        executors={"default": executor or AsyncIOExecutor(), INTERNAL: AsyncIOExecutor()},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=UTC,
    )


@contextlib.contextmanager
def _creating_tables(db: Database) -> Iterator[None]:
    """APScheduler creates its job tables at start: one host at a time on a shared PostgreSQL."""
    engine = db.sync_engine()
    try:
        with schema_lock(engine):
            yield
    finally:
        engine.dispose()


def store_of(job_id: str) -> str:
    """Job ids are ``<bot>:<id>``; each bot's jobs live in that bot's store."""
    return job_id.partition(":")[0]


@contextlib.asynccontextmanager
async def job_store(db: Database, bots: Sequence[str]) -> AsyncIterator[AsyncIOScheduler]:
    """The jobs of these bots, to list and change without running them (the CLI)."""
    await db.start()
    scheduler = make_scheduler(db, bots)
    with _creating_tables(db):
        scheduler.start(paused=True)
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)


def trigger_for(schedule: ScheduleConfig) -> BaseTrigger:
    zone = ZoneInfo(schedule.timezone)
    if schedule.cron is not None:
        return CronTrigger.from_crontab(schedule.cron, timezone=zone)
    return IntervalTrigger(minutes=schedule.every_minutes or 60, timezone=zone)


def misfire_settings(schedule: ScheduleConfig) -> dict[str, Any]:
    """APScheduler's misfire handling implements the job's policy for runs missed while down."""
    if schedule.missed == "skip":
        return {"misfire_grace_time": SKIP_GRACE_S, "coalesce": True}
    if schedule.missed == "catch_up":
        return {"misfire_grace_time": None, "coalesce": False}
    return {"misfire_grace_time": schedule.grace_minutes * 60, "coalesce": True}


async def scheduled_post(**kwargs: Any) -> None:
    """What APScheduler stores as every post job's callable. The host's executor runs the job
    through :meth:`SchedulerService.run` instead (ledger, review); a scheduler without that
    executor must not run post jobs."""
    raise RuntimeError(f"job {kwargs.get('job')} must run through the host's scheduler service")


SCHEDULED_POST = f"{__name__}:scheduled_post"


def job_kwargs(bot: str, schedule: ScheduleConfig, source: str, job: str | None = None) -> dict[str, Any]:
    """The JSON kwargs an APScheduler job carries: the job function's reference and the rest."""
    return {
        "job": job or schedule.job,
        "bot": bot,
        "target": schedule.target,
        "channel": schedule.channel,
        "options": schedule.options,
        "review": schedule.review,
        "review_hours": schedule.review_hours,
        "timezone": schedule.timezone,
        "source": source,
    }


class _PostExecutor(BaseExecutor):
    """Runs each scheduled run time of a job through :meth:`SchedulerService.run`."""

    def __init__(self, service: SchedulerService) -> None:
        super().__init__()
        self._service = service

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job, run_times))
        self._service.track(task)

    async def _run(self, job: Job, run_times: list[datetime]) -> None:
        limit = self._service.config.catch_up_limit
        if len(run_times) > limit:
            log.warning("job %s: %d runs missed; catching up the last %d", job.id, len(run_times), limit)
        events: list[JobExecutionEvent] = []
        store = job._jobstore_alias
        try:
            for run_time in run_times[-limit:]:
                events.append(await self._run_once(job, run_time, store))
        finally:  # always: APScheduler counts running instances until it hears back
            self._run_job_success(job.id, events)

    async def _run_once(self, job: Job, run_time: datetime, store: str) -> JobExecutionEvent:
        late = datetime.now(UTC) - run_time
        if job.misfire_grace_time is not None and late > timedelta(seconds=job.misfire_grace_time):
            log.warning("job %s: the run of %s was missed by %s; skipped", job.id, run_time, late)
            try:
                await self._service.ledger.claim(job.id, period_key(run_time), job.kwargs["bot"], "missed")
            except Exception:
                log.exception("job %s: could not record the missed run", job.id)
            return JobExecutionEvent(EVENT_JOB_MISSED, job.id, store, run_time)
        try:
            await self._service.run(job.id, job.kwargs, run_time)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            return JobExecutionEvent(EVENT_JOB_ERROR, job.id, store, run_time, exception=exc)
        return JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, store, run_time)


class SchedulerService:
    def __init__(self, host: Host, config: SchedulerConfig, bots: Sequence[BotParts]) -> None:
        self.host = host
        self.config = config
        self.bots = {parts.name: parts for parts in bots}
        self.ledger = Ledger(host.db, host.writes)
        self.review = ReviewQueue(host.db)
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and reconcile the jobs, paused: nothing fires before the channels are up."""
        scheduler = self._scheduler = make_scheduler(self.host.db, list(self.bots), _PostExecutor(self))
        with _creating_tables(self.host.db):  # another host may be starting on the same database
            scheduler.start(paused=True)
            self.reconcile()
        scheduler.add_job(
            self._tick_tracked,
            IntervalTrigger(seconds=self.config.tick_seconds),
            id="tick",
            jobstore=INTERNAL,
            executor=INTERNAL,
            replace_existing=True,
        )

    async def ready(self) -> None:
        """The channels are up: finish interrupted periods, then let due jobs fire."""
        await self._finish_interrupted()
        self.scheduler.resume()

    async def stop(self, timeout: float = 30.0) -> None:
        if self._scheduler is None:
            return
        self._scheduler.shutdown(wait=False)
        self._scheduler = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every run in progress has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    @property
    def scheduler(self) -> AsyncIOScheduler:
        if self._scheduler is None:
            raise RuntimeError("the scheduler is not running")
        return self._scheduler

    # -- jobs from config and plugins ----------------------------------------------------------
    def wanted_jobs(self) -> dict[str, dict[str, Any]]:
        """Every job config and plugins ask for, by id, as ``add_job`` keyword arguments."""
        wanted: dict[str, dict[str, Any]] = {}
        for parts in self.bots.values():
            for schedule in parts.schedules:
                wanted[f"{parts.name}:{schedule.id}"] = {
                    "func": SCHEDULED_POST,
                    "trigger": trigger_for(schedule),
                    "kwargs": job_kwargs(parts.name, schedule, "config"),
                    **misfire_settings(schedule),
                }
            for plugin in parts.plugins:
                for method_name, spec in _scheduled_methods(plugin):
                    schedule = spec.as_schedule()
                    cls = type(plugin)
                    ref = f"{cls.__module__}:{cls.__qualname__}.{method_name}"
                    wanted[f"{parts.name}:{plugin.plugin_name()}.{spec.id}"] = {
                        "func": SCHEDULED_POST,
                        "trigger": trigger_for(schedule),
                        "kwargs": job_kwargs(parts.name, schedule, "plugin", ref),
                        **misfire_settings(schedule),
                    }
        return wanted

    def reconcile(self) -> None:
        """Add new config/plugin jobs, update changed ones (keeping their next run when the
        trigger is the same, so missed runs stay visible), remove those no longer configured.
        Jobs added by operators at run time are left alone."""
        scheduler = self.scheduler
        wanted = self.wanted_jobs()
        for job in self._all_jobs():
            if job.kwargs.get("source") in ("config", "plugin") and job.id not in wanted:
                log.info("job %s: no longer configured; removed", job.id)
                scheduler.remove_job(job.id, jobstore=store_of(job.id))
        for job_id, spec in wanted.items():
            store = store_of(job_id)
            existing = scheduler.get_job(job_id, jobstore=store)
            if existing is None:
                scheduler.add_job(id=job_id, name=job_id, jobstore=store, **spec)
                log.info("job %s: added (%s)", job_id, spec["trigger"])
                continue
            if _trigger_key(existing.trigger) != _trigger_key(spec["trigger"]):
                paused = existing.next_run_time is None
                scheduler.reschedule_job(job_id, jobstore=store, trigger=spec["trigger"])
                if paused:  # an operator paused it; a new time does not resume it
                    scheduler.pause_job(job_id, jobstore=store)
                log.info("job %s: rescheduled (%s)", job_id, spec["trigger"])
            changes = {k: v for k, v in spec.items() if k != "trigger" and _differs(existing, k, v)}
            if changes:
                scheduler.modify_job(job_id, jobstore=store, **changes)
                log.info("job %s: updated (%s)", job_id, ", ".join(sorted(changes)))

    def _all_jobs(self) -> list[Job]:
        return [job for bot in self.bots for job in self.scheduler.get_jobs(jobstore=bot)]

    def _job(self, job_id: str) -> Job | None:
        if store_of(job_id) not in self.bots:
            return None
        return self.scheduler.get_job(job_id, jobstore=store_of(job_id))

    # -- running one period ------------------------------------------------------------------
    async def run(
        self, job_id: str, kwargs: dict[str, Any], run_time: datetime, *, again: bool = False
    ) -> str:
        """Write and post (or send for review) the period ``run_time`` of a job, once.

        Returns what happened: posted, review, skipped, failed, or already (another run has it).
        ``again``: the period was claimed by a run that died; take it over.
        """
        period = period_key(run_time)
        async with self.ledger.hold(job_id, period) as held:
            if not held:
                log.info("job %s: period %s is being handled by another host", job_id, period)
                return "already"
            return await self._run_held(job_id, kwargs, run_time, period, again)

    async def _run_held(
        self, job_id: str, kwargs: dict[str, Any], run_time: datetime, period: str, again: bool
    ) -> str:
        bot = kwargs["bot"]
        if again:  # taking over: unless its runner finished it meanwhile
            state = await self.ledger.state(job_id, period)
            if state != "claimed":
                log.info("job %s: period %s was finished meanwhile (%s)", job_id, period, state)
                return "already"
        elif not await self.ledger.claim(job_id, period, bot):
            state = await self.ledger.state(job_id, period)
            log.info("job %s: period %s already handled (%s)", job_id, period, state)
            return "already"
        try:
            ctx = self._context(job_id, kwargs, run_time)
            text = await self._call(kwargs["job"], ctx, bot)
        except Exception as exc:
            log.exception("job %s: writing the post for %s failed", job_id, period)
            await self.ledger.mark(job_id, period, "failed", f"{type(exc).__name__}: {exc}")
            return "failed"
        if not text:
            await self.ledger.mark(job_id, period, "skipped", ctx.skipped or "nothing to post")
            return "skipped"
        if kwargs.get("review"):
            deadline = as_deadline(run_time, kwargs.get("review_hours", 4.0))
            draft = await self.review.create(
                job_id=job_id, period=period, bot=bot, target=kwargs["target"], text=text, deadline=deadline
            )
            await self.ledger.mark(job_id, period, "review", f"draft #{draft.id}")
            await self._ask_operators(draft)
            return "review"
        return await self._post(job_id, period, kwargs, text)

    async def _post(self, job_id: str, period: str, kwargs: dict[str, Any], text: str) -> str:
        platform, _, chat = kwargs["target"].partition(":")
        outbound = Outbound(ChannelRef(platform, chat, ChannelKind.GROUP), text)
        try:
            key = f"post:{job_id}:{period}"
            await self.host.send(kwargs["bot"], outbound, key=key, channel=kwargs.get("channel"))
        except Exception as exc:
            log.exception("job %s: posting %s to %s failed", job_id, period, kwargs["target"])
            await self.ledger.mark(job_id, period, "failed", f"{type(exc).__name__}: {exc}")
            return "failed"
        await self.ledger.mark(job_id, period, "posted")
        log.info("job %s: posted %s to %s", job_id, period, kwargs["target"])
        return "posted"

    async def _call(self, ref: str, ctx: JobContext, bot: str) -> str | None:
        """Import the job function and call it; a plugin's method is called on the bot's loaded
        instance of that plugin (found by class, so a reloaded plugin still owns its jobs)."""
        func = ref_to_obj(ref)
        if getattr(func, SCHEDULED_TAG, None) is None:
            return await func(ctx)
        parts = self.bots[bot]
        class_name, _, method = func.__qualname__.rpartition(".")
        owner = next(
            (
                p
                for p in parts.plugins
                if type(p).__qualname__ == class_name and type(p).__module__ == func.__module__
            ),
            None,
        )
        if owner is None:
            raise LookupError(f"no loaded plugin of bot {bot!r} defines {func.__qualname__}")
        if owner.plugin_name() in parts.disabled:
            ctx.skip(f"plugin {owner.plugin_name()} is disabled")
            return None
        return await getattr(owner, method)(ctx)

    def _context(self, job_id: str, kwargs: dict[str, Any], run_time: datetime) -> JobContext:
        parts = self.bots.get(kwargs["bot"])
        if parts is None:
            raise LookupError(f"job {job_id}: bot {kwargs['bot']!r} is not configured on this host")

        async def history(chat: str, since: datetime, until: datetime) -> list[LoggedMessage]:
            rows = await self.host.history.between(parts.name, chat, since, until)
            person = self.host.permissions.person_of
            return [
                LoggedMessage(
                    as_utc(row.at), row.chat, person(row.author), row.author_name, row.text, row.message_id
                )
                for row in rows
            ]

        return JobContext(
            bot=parts.name,
            job_id=job_id,
            scheduled_at=run_time.astimezone(ZoneInfo(kwargs.get("timezone") or "UTC")),
            options=dict(kwargs.get("options") or {}),
            persona=parts.persona,
            llm=parts.llm,
            context_tokens=parts.context_tokens,
            count_tokens=parts.count_tokens,
            target_chat=kwargs["target"],
            logger=logging.getLogger(f"bots.jobs.{job_id}"),
            _history=history,
            _retrieve=parts.retrieve,
            gate_stats=self.host.gate_stats,
        )

    async def _finish_interrupted(self) -> None:
        """Periods a dead run left claimed: finished by the outbox when the post was recorded
        (the host resent what was left at start), else written and posted again, within a day."""
        for entry in await self.ledger.unfinished(within=timedelta(hours=24)):
            async with self.ledger.hold(entry.job_id, entry.period) as held:
                if not held:  # another host is running it now: not interrupted
                    continue
            if await self.host.outbox.recorded(f"post:{entry.job_id}:{entry.period}"):
                await self.ledger.mark(entry.job_id, entry.period, "posted", "finished after a restart")
                continue
            job = self._job(entry.job_id)
            if job is None:
                await self.ledger.mark(entry.job_id, entry.period, "failed", "job removed before it finished")
                continue
            log.info("job %s: period %s was interrupted; running it again", entry.job_id, entry.period)
            run_time = datetime.fromisoformat(entry.period)
            self.track(asyncio.create_task(self.run(job.id, job.kwargs, run_time, again=True)))

    # -- operators -----------------------------------------------------------------------------
    async def _ask_operators(self, draft: ReviewDraft) -> None:
        text = describe_draft(draft)
        for chat in self.config.review_chats:
            platform, _, chat_id = chat.partition(":")
            try:
                await self.host.send(draft.bot, Outbound(ChannelRef(platform, chat_id), text))
            except Exception:
                log.exception("draft #%d: could not send it to %s for review", draft.id, chat)

    async def approve(self, draft_id: int, by: str, version: int | None = None) -> str:
        draft = await self.review.decide(draft_id, "approved", by, version)
        return await self._post_approved(draft)

    async def reject(self, draft_id: int, by: str) -> None:
        draft = await self.review.decide(draft_id, "rejected", by)
        await self.ledger.mark(draft.job_id, draft.period, "rejected", f"by {by}")

    async def edit(self, draft_id: int, text: str, by: str) -> ReviewDraft:
        return await self.review.add_version(draft_id, text, by)

    async def regenerate(self, draft_id: int, by: str) -> ReviewDraft:
        """Write the period again; the new text becomes another version to choose from."""
        draft = await self.review.open_draft(draft_id)
        job = self._job(draft.job_id)
        if job is None:
            raise ReviewError(f"the job of draft #{draft_id} no longer exists")
        ctx = self._context(job.id, job.kwargs, datetime.fromisoformat(draft.period))
        text = await self._call(job.kwargs["job"], ctx, draft.bot)
        if not text:
            raise ReviewError(f"the job wrote nothing this time ({ctx.skipped or 'no text'})")
        return await self.review.add_version(draft_id, text, by)

    async def _post_approved(self, draft: ReviewDraft) -> str:
        """Post an approved draft once: whoever moves it from approved to posting posts it. A
        failed post goes back to approved (retried at the next tick) until its deadline."""
        if not await self.review.transition(draft.id, "approved", "posting"):
            return "already being posted"
        job = self._job(draft.job_id)
        kwargs = job.kwargs if job is not None else {"bot": draft.bot, "target": draft.target}
        result = await self._post(draft.job_id, draft.period, kwargs, draft.versions[draft.chosen])
        if result == "posted":
            await self.review.transition(draft.id, "posting", "posted")
        elif as_utc(draft.deadline) > datetime.now(UTC):
            await self.review.transition(draft.id, "posting", "approved")
        else:
            await self.review.transition(draft.id, "posting", "failed")
        return result

    async def _tick_tracked(self) -> None:
        task = asyncio.create_task(self.tick())
        self.track(task)  # so stop() waits for a post in progress
        await task

    async def tick(self) -> None:
        """Every few seconds: pick up changes made from the CLI, expire late drafts, post drafts
        approved from the CLI (or whose post failed, until their deadline)."""
        if self._scheduler is not None:
            self._scheduler.wakeup()
        now = datetime.now(UTC)
        for draft in await self.review.overdue(now):
            if not await self.review.transition(draft.id, "pending", "expired"):
                continue  # decided meanwhile
            why = f"draft #{draft.id} not approved before its deadline; not posted"
            await self.ledger.mark(draft.job_id, draft.period, "expired", why)
            log.warning("job %s: %s", draft.job_id, why)
        for draft in await self.review.approved():
            if as_utc(draft.deadline) <= now and await self.review.transition(draft.id, "approved", "failed"):
                await self.ledger.mark(
                    draft.job_id, draft.period, "failed", "approved, not posted by its deadline"
                )
                continue
            await self._post_approved(draft)

    async def run_now(self, job_id: str) -> str:
        job = self._job(job_id)
        if job is None:
            raise LookupError(f"no job {job_id!r}")
        return await self.run(job.id, job.kwargs, datetime.now(UTC))

    def jobs(self) -> list[JobInfo]:
        return list_jobs(self.scheduler, list(self.bots))

    def add(self, bot: str, schedule: ScheduleConfig) -> str:
        """A job added by an operator at run time (config reconciliation leaves it alone)."""
        if bot not in self.bots:
            raise LookupError(f"no bot {bot!r} on this host")
        job_id = f"{bot}:{schedule.id}"
        if self._job(job_id) is not None:
            raise ValueError(f"job {job_id} exists; remove it first")
        self.scheduler.add_job(
            id=job_id,
            name=job_id,
            jobstore=bot,
            func=SCHEDULED_POST,
            trigger=trigger_for(schedule),
            kwargs=job_kwargs(bot, schedule, "admin"),
            **misfire_settings(schedule),
        )
        return job_id

    def pause(self, job_id: str) -> None:
        self.scheduler.pause_job(job_id, jobstore=self._store(job_id))

    def resume(self, job_id: str) -> None:
        self.scheduler.resume_job(job_id, jobstore=self._store(job_id))

    def remove(self, job_id: str) -> None:
        self.scheduler.remove_job(job_id, jobstore=self._store(job_id))

    def _store(self, job_id: str) -> str:
        if store_of(job_id) not in self.bots:
            raise LookupError(f"no job {job_id!r}")
        return store_of(job_id)

    async def drafts(self) -> list[str]:
        """One line per draft waiting for a decision."""
        return [
            f"#{d.id} {d.job_id} -> {d.target}, {d.state}, {len(d.versions)} version(s), "
            f"due {d.deadline:%m-%d %H:%M} UTC"
            for d in await self.review.pending()
        ]

    async def show(self, draft_id: int) -> str:
        return describe_draft(await self.review.get(draft_id))


def list_jobs(scheduler: AsyncIOScheduler, bots: Sequence[str]) -> list[JobInfo]:
    jobs = [job for bot in bots for job in scheduler.get_jobs(jobstore=bot)]
    return [
        JobInfo(job.id, job.kwargs.get("job", ""), str(job.trigger), job.next_run_time, dict(job.kwargs))
        for job in sorted(jobs, key=lambda j: j.id)
    ]


def as_deadline(run_time: datetime, hours: float) -> datetime:
    return run_time.astimezone(UTC) + timedelta(hours=hours)


def describe_draft(draft: ReviewDraft) -> str:
    version = f" (version {draft.chosen + 1} of {len(draft.versions)})" if len(draft.versions) > 1 else ""
    return (
        f"Draft #{draft.id} of job {draft.job_id} for {draft.target}{version}, "
        f"due by {draft.deadline:%Y-%m-%d %H:%M} UTC:\n\n{draft.versions[draft.chosen]}\n\n"
        f"/review approve {draft.id} · /review edit {draft.id} <text> · "
        f"/review regen {draft.id} · /review reject {draft.id}"
    )


def _scheduled_methods(plugin: Plugin) -> list[tuple[str, ScheduledSpec]]:
    found = []
    for name in dir(type(plugin)):
        spec = getattr(getattr(type(plugin), name, None), SCHEDULED_TAG, None)
        if isinstance(spec, ScheduledSpec):
            found.append((name, spec))
    return found


def _trigger_key(trigger: BaseTrigger) -> tuple[str, str]:
    """What makes a trigger different: its fields and its time zone (``str`` leaves that out)."""
    return str(trigger), str(getattr(trigger, "timezone", ""))


def _differs(job: Job, key: str, value: Any) -> bool:
    if key == "func":
        return job.func_ref != value
    return getattr(job, key) != value
