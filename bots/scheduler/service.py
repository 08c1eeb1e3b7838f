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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from bots.core.storage import Database, ReviewDraft, as_utc
from bots.plugins.api import SCHEDULED_TAG, Plugin, ScheduledSpec
from bots.plugins.jobs import JobContext, LoggedMessage, PersonaView, Source
from bots.scheduler.ledger import Ledger, period_key
from bots.scheduler.review import ReviewError, ReviewQueue

log = logging.getLogger("bots.scheduler")

JOBS_TABLE = "scheduled_jobs"
SKIP_GRACE_S = 30  # "skip": a run this late still counts as on time
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


@dataclass(frozen=True)
class JobInfo:
    id: str
    func: str
    trigger: str
    next_run: datetime | None  # None: paused
    kwargs: dict[str, Any]


def make_scheduler(db: Database, executor: BaseExecutor | None = None) -> AsyncIOScheduler:
    return AsyncIOScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(engine=db.sync_engine(), tablename=JOBS_TABLE),
            "internal": MemoryJobStore(),
        },
        executors={"default": executor or AsyncIOExecutor(), "internal": AsyncIOExecutor()},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=UTC,
    )


@contextlib.asynccontextmanager
async def job_store(db: Database) -> AsyncIterator[AsyncIOScheduler]:
    """The jobs of a database, to list and change without running them (the CLI)."""
    await db.start()
    scheduler = make_scheduler(db)
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
        events = []
        for run_time in run_times[-limit:]:
            late = datetime.now(UTC) - run_time
            if job.misfire_grace_time is not None and late > timedelta(seconds=job.misfire_grace_time):
                log.warning("job %s: the run of %s was missed by %s; skipped", job.id, run_time, late)
                await self._service.ledger.claim(job.id, period_key(run_time), job.kwargs["bot"], "missed")
                events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, "default", run_time))
                continue
            try:
                await self._service.run(job.id, job.kwargs, run_time)
            except Exception as exc:
                log.exception("job %s failed", job.id)
                events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, "default", run_time, exception=exc))
            else:
                events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, "default", run_time))
        self._run_job_success(job.id, events)


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
        scheduler = self._scheduler = make_scheduler(self.host.db, _PostExecutor(self))
        scheduler.start(paused=True)  # reconcile before anything fires
        self.reconcile()
        scheduler.add_job(
            self.tick,
            IntervalTrigger(seconds=self.config.tick_seconds),
            id="tick",
            jobstore="internal",
            executor="internal",
            replace_existing=True,
        )
        await self._finish_interrupted()
        scheduler.resume()

    async def stop(self, timeout: float = 30.0) -> None:
        if self._scheduler is None:
            return
        self._scheduler.shutdown(wait=False)
        self._scheduler = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()

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
        for job in scheduler.get_jobs(jobstore="default"):
            if job.kwargs.get("source") in ("config", "plugin") and job.id not in wanted:
                log.info("job %s: no longer configured; removed", job.id)
                scheduler.remove_job(job.id)
        for job_id, spec in wanted.items():
            existing = scheduler.get_job(job_id, jobstore="default")
            if existing is None:
                scheduler.add_job(id=job_id, name=job_id, **spec)
                log.info("job %s: added (%s)", job_id, spec["trigger"])
                continue
            if str(existing.trigger) != str(spec["trigger"]):
                scheduler.reschedule_job(job_id, trigger=spec["trigger"])
                log.info("job %s: rescheduled (%s)", job_id, spec["trigger"])
            changes = {k: v for k, v in spec.items() if k != "trigger" and _differs(existing, k, v)}
            if changes:
                scheduler.modify_job(job_id, **changes)
                log.info("job %s: updated (%s)", job_id, ", ".join(sorted(changes)))

    # -- running one period ------------------------------------------------------------------
    async def run(
        self, job_id: str, kwargs: dict[str, Any], run_time: datetime, *, again: bool = False
    ) -> str:
        """Write and post (or send for review) the period ``run_time`` of a job, once.

        Returns what happened: posted, review, skipped, failed, or already (another run has it).
        ``again``: the period was claimed by a run that died; take it over.
        """
        bot = kwargs["bot"]
        period = period_key(run_time)
        if not again and not await self.ledger.claim(job_id, period, bot):
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
        """Import the job function and call it; a plugin's method is called on its instance."""
        func = ref_to_obj(ref)
        spec: ScheduledSpec | None = getattr(func, SCHEDULED_TAG, None)
        if spec is None:
            return await func(ctx)
        plugins = self.bots[bot].plugins
        owner = next((p for p in plugins if getattr(type(p), func.__name__, None) is func), None)
        if owner is None:
            raise LookupError(f"no loaded plugin of bot {bot!r} defines {func.__qualname__}")
        return await func(owner, ctx)

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
        )

    async def _finish_interrupted(self) -> None:
        """Periods a dead run left claimed: finished by the outbox when the post was recorded
        (the host resent what was left at start), else written and posted again, within a day."""
        for entry in await self.ledger.unfinished(within=timedelta(hours=24)):
            if await self.host.outbox.recorded(f"post:{entry.job_id}:{entry.period}"):
                await self.ledger.mark(entry.job_id, entry.period, "posted", "finished after a restart")
                continue
            job = self.scheduler.get_job(entry.job_id, jobstore="default")
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
        job = self.scheduler.get_job(draft.job_id, jobstore="default")
        if job is None:
            raise ReviewError(f"the job of draft #{draft_id} no longer exists")
        ctx = self._context(job.id, job.kwargs, datetime.fromisoformat(draft.period))
        text = await self._call(job.kwargs["job"], ctx, draft.bot)
        if not text:
            raise ReviewError(f"the job wrote nothing this time ({ctx.skipped or 'no text'})")
        return await self.review.add_version(draft_id, text, by)

    async def _post_approved(self, draft: ReviewDraft) -> str:
        job = self.scheduler.get_job(draft.job_id, jobstore="default")
        kwargs = job.kwargs if job is not None else {"bot": draft.bot, "target": draft.target}
        result = await self._post(draft.job_id, draft.period, kwargs, draft.versions[draft.chosen])
        await self.review.set_state(draft.id, "posted" if result == "posted" else "approved")
        return result

    async def tick(self) -> None:
        """Every few seconds: pick up changes made from the CLI, expire late drafts, post drafts
        approved from the CLI."""
        if self._scheduler is not None:
            self._scheduler.wakeup()
        for draft in await self.review.overdue():
            await self.review.set_state(draft.id, "expired")
            why = f"draft #{draft.id} not approved before its deadline; not posted"
            await self.ledger.mark(draft.job_id, draft.period, "expired", why)
            log.warning("job %s: %s", draft.job_id, why)
        for draft in await self.review.approved():
            await self._post_approved(draft)

    async def run_now(self, job_id: str) -> str:
        job = self.scheduler.get_job(job_id, jobstore="default")
        if job is None:
            raise LookupError(f"no job {job_id!r}")
        return await self.run(job.id, job.kwargs, datetime.now(UTC))

    def jobs(self) -> list[JobInfo]:
        return list_jobs(self.scheduler)

    def add(self, bot: str, schedule: ScheduleConfig) -> str:
        """A job added by an operator at run time (config reconciliation leaves it alone)."""
        if bot not in self.bots:
            raise LookupError(f"no bot {bot!r} on this host")
        job_id = f"{bot}:{schedule.id}"
        if self.scheduler.get_job(job_id, jobstore="default") is not None:
            raise ValueError(f"job {job_id} exists; remove it first")
        self.scheduler.add_job(
            id=job_id,
            name=job_id,
            func=SCHEDULED_POST,
            trigger=trigger_for(schedule),
            kwargs=job_kwargs(bot, schedule, "admin"),
            **misfire_settings(schedule),
        )
        return job_id

    def pause(self, job_id: str) -> None:
        self.scheduler.pause_job(job_id, jobstore="default")

    def resume(self, job_id: str) -> None:
        self.scheduler.resume_job(job_id, jobstore="default")

    def remove(self, job_id: str) -> None:
        self.scheduler.remove_job(job_id, jobstore="default")

    async def drafts(self) -> list[str]:
        """One line per draft waiting for a decision."""
        return [
            f"#{d.id} {d.job_id} -> {d.target}, {d.state}, {len(d.versions)} version(s), "
            f"due {d.deadline:%m-%d %H:%M} UTC"
            for d in await self.review.pending()
        ]

    async def show(self, draft_id: int) -> str:
        return describe_draft(await self.review.get(draft_id))


def list_jobs(scheduler: AsyncIOScheduler) -> list[JobInfo]:
    return [
        JobInfo(job.id, job.kwargs.get("job", ""), str(job.trigger), job.next_run_time, dict(job.kwargs))
        for job in sorted(scheduler.get_jobs(jobstore="default"), key=lambda j: j.id)
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


def _differs(job: Job, key: str, value: Any) -> bool:
    if key == "func":
        return job.func_ref != value
    return getattr(job, key) != value
