"""The host: composition root at run time. Owns the loop, the bots, their adapters and storage."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bots.core import gate
from bots.core.adapter import Adapter, EventSink, NotAccepted
from bots.core.audit import AuditLog
from bots.core.control import HostControl
from bots.core.events import ChannelRef, MessageEvent, Outbound, SentRef
from bots.core.gate import GateStats
from bots.core.groupcommit import GroupCommit
from bots.core.history import History
from bots.core.inbox import Inbox, Unfinished
from bots.core.metrics import HostMetrics
from bots.core.ordering import ChatKey, ChatOrder, Turn, current_turn
from bots.core.outbound import deliver
from bots.core.outbox import Outbox, Pending
from bots.core.permissions import Permissions
from bots.core.pipeline import Pipeline, reply_key
from bots.core.storage import Database

log = logging.getLogger("bots.host")

Hook = Callable[[], Awaitable[None]]


class Service(Protocol):
    """A host-wide part with its own life (the scheduler)."""

    async def start(self) -> None:
        """Before the channels start: load state; do nothing that sends."""

    async def ready(self) -> None:
        """The channels are up and the inbox was replayed: go."""

    async def stop(self) -> None:
        """After the events in flight were handled, before the channels stop."""


@dataclass
class Bot:
    """One running bot: a pipeline (persona, plugins, agent) and the channels it sits in."""

    name: str
    pipeline: Pipeline
    adapters: list[Adapter] = field(default_factory=list)
    # (start, stop) pairs run in order at start and in reverse at stop: memory, plugins, ...
    lifecycle: list[tuple[Hook, Hook]] = field(default_factory=list)

    def channel(self, name: str) -> Adapter:
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        raise LookupError(f"bot {self.name!r} has no channel named {name!r}")

    def adapter_for(self, platform: str) -> Adapter:
        """The channel that posts to ``platform`` on the bot's own initiative (plugins, schedules)."""
        found = [adapter for adapter in self.adapters if adapter.platform == platform]
        if not found:
            raise LookupError(f"bot {self.name!r} has no channel on {platform!r}")
        return next((a for a in found if a.capabilities.proactive), found[0])


# Young objects are collected every this many allocations (Python's default: 700); a message
# allocates a few hundred, so the default runs a collection every few messages.
YOUNG_GC_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """For a long-running host, once started: what start-up built (modules, config, models) lives
    as long as the process, so it is frozen out of the collector's scans, and young objects are
    collected less often. Measured in bench/README.md (core_bench)."""
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_GC_THRESHOLD), older, oldest)


class Host:
    def __init__(
        self,
        db: Database,
        *,
        permissions: Permissions | None = None,
        muted: set[str] | None = None,
        secrets: Callable[[], Iterable[str]] = tuple,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.db = db
        self.permissions = permissions or Permissions()
        self.muted = muted if muted is not None else set()  # shared by every bot's pipeline
        self.audit = AuditLog(db, secrets)
        self.writes = GroupCommit(db)  # inbox and outbox writes share commits
        self.inbox = Inbox(db, self.writes)
        self.outbox = Outbox(db, self.writes)
        self.history = History(db, self.writes)
        self.control = HostControl(self)
        self.gate_stats = GateStats()  # the quality gate's verdicts on everything the bots write
        self.metrics = HostMetrics()  # messages in/out, latency, model use (exported by bots.web)
        self.own_accounts: set[str] = set()  # canonical ids of this host's bot accounts (all bots)
        self.bots: dict[str, Bot] = {}
        self.stop_grace_s = stop_grace_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self.order = ChatOrder()  # one chat's events, replies and posts go one at a time, in order
        self._started_adapters: list[Adapter] = []
        self._started_hooks: list[tuple[str, Hook]] = []
        self.services: list[Service] = []
        self._started_services: list[Service] = []
        self._running = False
        self._stop_requested: asyncio.Event | None = None
        # False where the messages an earlier run left are another process's to replay (a worker
        # of the gateway/worker split: they wait in the shard streams)
        self.replays_at_start = True

    def add_bot(self, bot: Bot) -> None:
        if bot.name in self.bots:
            raise ValueError(f"two bots are named {bot.name!r}")
        self.bots[bot.name] = bot

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start storage, plugins and channels; if any part fails, undo what started."""
        # the quality gate's tables load in a thread meanwhile: at the first message they
        # would stall every chat for a second or more
        gate_tables = asyncio.create_task(asyncio.to_thread(gate.warm_up), name="gate warm-up")
        await self.db.start()
        await self.writes.start()
        await self.permissions.load(self.db)
        await self.control.load_mutes()
        await self.inbox.count_abandoned()
        self._running = True
        try:
            for bot in self.bots.values():
                for start, stop in bot.lifecycle:
                    await start()
                    self._started_hooks.append((bot.name, stop))
            for service in self.services:
                await service.start()
                self._started_services.append(service)
            # what earlier runs left, claimed (and queued in its chats) before a channel can
            # deliver anything of this run: replays keep their place in their chat's order
            leftovers = {
                name: await self._leftovers(bot) if self.replays_at_start else []
                for name, bot in self.bots.items()
            }
            await gate_tables
            for bot in self.bots.values():
                for adapter in bot.adapters:
                    await adapter.start(self._sink(bot, adapter))
                    self._started_adapters.append(adapter)
                    log.info("bot %s: channel %s (%s) started", bot.name, adapter.name, adapter.platform)
            for jobs in leftovers.values():
                for job in jobs:
                    self._spawn(job())
            await self.inbox.prune()
            await self.outbox.prune()
            await self.history.prune()
            for service in self._started_services:
                await service.ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Refuse new events, finish those in flight, then stop channels, plugins and storage."""
        if not self._running:
            return
        self._running = False
        await self.drain(timeout=self.stop_grace_s)
        for service in reversed(self._started_services):
            await _logged(service.stop(), f"stopping {type(service).__name__}")
        self._started_services.clear()
        leftovers = list(self._tasks)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        for adapter in reversed(self._started_adapters):
            await _logged(adapter.stop(), f"stopping channel {adapter.name}")
        for bot_name, stop in reversed(self._started_hooks):
            await _logged(stop(), f"bot {bot_name} shutdown")
        self._started_adapters.clear()
        self._started_hooks.clear()
        await self.writes.close()
        await self.db.close()

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self, *, settle_gc: bool = False) -> None:
        """Start, run until SIGINT/SIGTERM (or :meth:`request_stop`), then stop cleanly.
        ``settle_gc``: tune the garbage collector for a long-running process once started (the
        process's own host, as ``bots run``; see :func:`settle_garbage_collector`)."""
        self._stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop_requested.set)
        async with self:
            if settle_gc:
                settle_garbage_collector()
            await self._stop_requested.wait()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def in_service(self, adapter: Adapter) -> bool:
        """Whether the host started this channel and has not stopped it."""
        return any(started is adapter for started in self._started_adapters)

    def request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    # -- events --------------------------------------------------------------------------------
    def _sink(self, bot: Bot, adapter: Adapter) -> EventSink:
        """The adapter's way in. Returns once the event is durably accepted (or known as a
        duplicate), so the adapter may acknowledge it; raises when it could not be recorded."""

        async def sink(event: MessageEvent) -> asyncio.Future[None] | None:
            if not self._running:
                raise NotAccepted(f"event {event.id} arrived while the host is stopped")
            turn = self.order.turn(self._chat(bot, adapter.name, event.channel))  # arrival order
            try:
                accepted = await self.inbox.accept(bot.name, adapter.name, event)
            except BaseException:
                turn.release()
                raise
            if accepted is None:
                turn.release()
                log.debug("event %s: duplicate delivery dropped", event.id)
                return None
            self.metrics.message_in(bot.name, adapter.platform)
            again = accepted == "again"
            return self._spawn(self._process(bot, adapter, event, turn, again, since=time.monotonic()))

        return sink

    async def _process(
        self,
        bot: Bot,
        adapter: Adapter,
        event: MessageEvent,
        turn: Turn,
        replay: bool = False,
        since: float | None = None,
    ) -> None:
        async with turn:
            await bot.pipeline.handle(event, adapter, replay=replay)  # never raises: errors are logged there
            self.inbox.finish(bot.name, event)
        if since is not None:  # arrived in this run: the time from arrival to the end of its turn
            self.metrics.handled(bot.name, time.monotonic() - since)

    @staticmethod
    def _chat(bot: Bot, channel: str, chat: ChannelRef) -> ChatKey:
        return (bot.name, channel, chat.canonical)

    async def _leftovers(self, bot: Bot) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """What earlier runs left of ``bot``'s work, each queued in its chat now, oldest first:
        replies left half-sent, then messages left unfinished (replayed)."""
        jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
        for pending in await self.outbox.pending(bot.name, within=self.inbox.replay_window):
            turn = self.order.turn(self._chat(bot, pending.channel, pending.target))
            jobs.append(functools.partial(self._resume, bot, pending, turn))
        unfinished = await self.inbox.unfinished(bot.name)
        abandoned = await self.inbox.charge(bot.name, await self._were_handled(bot.name, unfinished))
        for item in unfinished:
            if item.event.id in abandoned:
                continue
            try:
                adapter = bot.channel(item.channel)
            except LookupError:
                log.warning("event %s: channel %s is gone; not replayed", item.event.id, item.channel)
                continue
            if not getattr(adapter, "replays", True):  # a request/response channel: the asker is gone
                log.info("event %s: its request ended with the earlier run; not replayed", item.event.id)
                self.inbox.finish(bot.name, item.event)
                continue
            turn = self.order.turn(self._chat(bot, adapter.name, item.event.channel))
            log.info("event %s: replaying it", item.event.id)
            self.metrics.replayed[bot.name] += 1
            jobs.append(functools.partial(self._process, bot, adapter, item.event, turn, replay=True))
        return jobs

    async def _were_handled(self, bot: str, unfinished: list[Unfinished]) -> list[str]:
        """The messages that were being handled when an earlier run stopped: in each chat the
        first unfinished one, unless its reply was already written (it was only being sent).
        The others were waiting for their turn: replaying them costs them no attempt."""
        first: dict[tuple[str, str], Unfinished] = {}
        for item in unfinished:
            first.setdefault((item.channel, item.event.channel.canonical), item)
        replied = await self.outbox.recorded_keys([reply_key(bot, i.event.id) for i in first.values()])
        return [i.event.id for i in first.values() if reply_key(bot, i.event.id) not in replied]

    async def _resume(self, bot: Bot, pending: Pending, turn: Turn) -> None:
        async with turn:
            try:
                await self.outbox.resume(pending.key, bot.channel)
            except Exception:
                log.exception("outbox %s: resending after the restart failed", pending.key)

    async def handle(self, bot_name: str, event: MessageEvent, adapter: Adapter) -> None:
        """Process one event and wait for it (one-shot use, such as ``bots chat --message``)."""
        await self.bots[bot_name].pipeline.handle(event, adapter)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every event in flight has been handled and its bookkeeping committed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                log.warning("%d event(s) still in flight after %.1fs", len(self._tasks), timeout)
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)
        await self.writes.flush()

    async def send(
        self, bot_name: str, outbound: Outbound, key: str | None = None, channel: str | None = None
    ) -> list[SentRef]:
        """Send from a bot to any chat on a platform it sits on (plugins, schedules).

        With an idempotency ``key`` the message goes through the outbox: sending the same key
        again (after a restart) sends only what was not sent yet. ``channel`` picks the bot's
        channel by name where it has two on one platform. A post takes its turn in the chat's
        queue (:mod:`bots.core.ordering`): it never interleaves with replies or other posts.
        """
        bot = self.bots[bot_name]
        adapter = bot.channel(channel) if channel else bot.adapter_for(outbound.target.platform)
        chat = self._chat(bot, adapter.name, outbound.target)
        held = current_turn()
        if held is not None and held.key == chat:  # posted while handling an event of this chat
            return await self._post(bot_name, adapter, outbound, key)
        async with self.order.turn(chat):
            return await self._post(bot_name, adapter, outbound, key)

    async def _post(self, bot: str, adapter: Adapter, outbound: Outbound, key: str | None) -> list[SentRef]:
        if key is None:
            sent = await deliver(adapter, outbound)
        else:
            sent = await self.outbox.deliver(bot, adapter, outbound, key)
        self.metrics.message_out(bot, adapter.platform)
        return sent


async def _logged(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("%s failed", what)
