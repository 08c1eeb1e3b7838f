"""``bots worker``: owns shard streams through leases and runs the pipeline for their messages.

Stateless: everything it knows is in the database and in Redis, so workers come and go. Each worker
keeps a heartbeat in ``{prefix}:workers`` and holds about ``shards / live workers`` shard leases
(see :mod:`bots.scale.lease`): it takes free shards while it holds fewer than its share, and gives
shards up (after finishing what it read from them) while it holds more. A shard is read by its owner
only, so a chat's messages (always on one shard) are seen in stream order; the worker queues each
in its chat (:class:`~bots.core.ordering.ChatOrder`): one at a time per chat, chats concurrently, at
most ``concurrency`` messages at once (and as many more read ahead, waiting).

An entry is acknowledged (and dropped) after its replies were recorded in the outbox, handed over
to the gateway, and the message marked finished. A worker that dies leaves its entries pending;
whoever takes the shard next claims them all (XAUTOCLAIM) before reading new ones, and handles them
as replays: a reply already recorded is handed over again (the gateway sends only what was not
sent), not generated again. As in ``bots run``, only the message a dead worker was handling in each
chat is charged an attempt; one charged ``max_attempts`` times is abandoned, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from bots.core.host import Bot, Host
from bots.core.ordering import Turn
from bots.core.pipeline import reply_key
from bots.scale.bus import WORKERS_GROUP, Bus, Entry, until_redis_answers
from bots.scale.codec import Inbound, MalformedEntry, decode_inbound
from bots.scale.lease import Leases
from bots.scale.remote import RemoteChannel, describe_missing

log = logging.getLogger("bots.scale.worker")
READ_BLOCK_MS = 500


@dataclass
class Shard:
    number: int
    stream: str
    jobs: set[asyncio.Task[None]] = field(default_factory=set)
    reading: bool = False  # its pending entries were claimed: new ones may be read
    leaving: bool = False  # being given up: nothing new is read from it


class Worker:
    def __init__(
        self,
        host: Host,
        bus: Bus,
        channels: list[RemoteChannel],
        *,
        name: str,
        concurrency: int = 32,
        lease_s: float = 5.0,
    ) -> None:
        self.host = host
        self.bus = bus
        self.channels = channels
        self.name = name
        self.concurrency = concurrency
        self.lease_ms = int(lease_s * 1000)
        self.leases = Leases(bus.redis, bus.keys, name, self.lease_ms)
        self.owned: dict[int, Shard] = {}
        self.handled = 0
        self.claimed = 0
        self._running = False
        self._jobs: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)  # messages being handled at once
        self._changed = asyncio.Event()
        self._read_lock = asyncio.Lock()  # held while a read (which names the shards it reads) runs
        self._tasks: list[asyncio.Task[None]] = []
        self._leaving: set[asyncio.Task[None]] = set()  # shards being given up
        self._first = zlib.crc32(name.encode()) % bus.shards  # where this worker looks for free shards

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.bus.check_shards()
        self.host.replays_at_start = False  # an earlier run's messages wait in the shard streams
        await self.host.start()
        self._running = True
        try:
            await self._refresh_channels()
            await self._keep_alive_once()
            await self._balance_once()
        except BaseException:
            await self.stop()
            raise
        self._tasks = [
            asyncio.create_task(self._every_tick(self._keep_alive_once, "renewing the leases")),
            asyncio.create_task(self._every_tick(self._balance_once, "taking its share of shards")),
            asyncio.create_task(self._read(), name="worker-read"),
        ]
        log.info(
            "worker started: %s holds shards %s of %d",
            self.name,
            ", ".join(map(str, sorted(self.owned))) or "none yet",
            self.bus.shards,
        )

    async def stop(self) -> None:
        """Stop reading, finish (within the host's grace) what was read, give the shards back."""
        if not self._running:
            return
        self._running = False
        self._changed.set()
        async with self._read_lock:
            for task in [*self._tasks, *self._leaving]:
                task.cancel()
            await asyncio.gather(*self._tasks, *self._leaving, return_exceptions=True)
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=self.host.stop_grace_s)
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        for number in list(self.owned):
            with contextlib.suppress(RedisError, OSError):
                await self.leases.release(number)
        self.owned.clear()
        with contextlib.suppress(RedisError, OSError):
            await self.bus.redis.zrem(self.bus.keys.workers, self.name)
        await self.host.stop()
        await self.bus.close()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- leases --------------------------------------------------------------------------------
    async def _every_tick(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        while self._running:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await step()
            except (RedisError, OSError) as exc:
                log.error("worker %s: %s failed (%s); trying again", self.name, what, exc)
            except Exception:
                log.exception("worker %s: %s failed; trying again", self.name, what)

    async def _keep_alive_once(self) -> None:
        """Heartbeat and lease renewal (a loop of its own: nothing slow may delay it), dropping the
        shards whose lease was lost."""
        redis, keys = self.bus.redis, self.bus.keys
        now = int(time.time() * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.workers, {self.name: now})
            pipe.zremrangebyscore(keys.workers, "-inf", now - 10 * self.lease_ms)
            await pipe.execute()
        for number in await self.leases.renew(list(self.owned)):
            self._lose(number)

    async def _balance_once(self) -> None:
        """Move toward this worker's share of the shards (shards / live workers), and take over
        what a worker that lost a shard was still handed after losing it."""
        now = int(time.time() * 1000)
        live = max(1, int(await self.bus.redis.zcount(self.bus.keys.workers, now - self.lease_ms, "+inf")))
        share = math.ceil(self.bus.shards / live)
        keeping = [s for s in self.owned.values() if not s.leaving]
        if len(keeping) > share:
            for shard in sorted(keeping, key=lambda s: len(s.jobs))[: len(keeping) - share]:
                shard.leaving = True
                leaving = asyncio.create_task(self._give_up(shard))
                self._leaving.add(leaving)
                leaving.add_done_callback(self._leaving.discard)
        elif len(keeping) < share:
            owners = await self.leases.owners(self.bus.shards)
            order = [(self._first + i) % self.bus.shards for i in range(self.bus.shards)]
            for number in order:
                if len(keeping) >= share or not self._running:
                    break
                if owners[number] is None and number not in self.owned and await self.leases.acquire(number):
                    keeping.append(await self._take(number))
        for shard in list(self.owned.values()):
            if shard.reading:
                await self._take_stragglers(shard)
        if any(not c.described for c in self.channels):
            await self._refresh_channels()

    async def _take_stragglers(self, shard: Shard) -> None:
        """Entries of an owned shard pending with another worker for two lease times: a worker
        that froze past its lease can still be handed entries by a read it had started before (it
        drops them once it sees the lease gone). Taken over and handled as replays."""
        idle = 2 * self.lease_ms
        pending = await self.bus.redis.xpending_range(shard.stream, WORKERS_GROUP, "-", "+", 200, idle=idle)
        theirs = [p["message_id"] for p in pending if p["consumer"] != self.name]
        if not theirs:
            return
        claimed = await self.bus.redis.xclaim(shard.stream, WORKERS_GROUP, self.name, idle, theirs)
        for entry_id, fields in claimed:
            if fields is None:
                continue
            item = self._decode(shard, (entry_id, fields))
            if item is not None:
                self._schedule(shard, entry_id, item, replay=True)
        self.claimed += len(claimed)
        log.warning(
            "worker %s: shard %d: took over %d straggling entries", self.name, shard.number, len(claimed)
        )

    async def _take(self, number: int) -> Shard:
        """A shard just leased: claim what its earlier owner left, queue it, then read new entries."""
        shard = self.owned[number] = Shard(number, self.bus.keys.inbound(number))
        try:
            await self.bus.ensure_group(shard.stream, WORKERS_GROUP)
            claimed = await self.bus.claim_all(shard.stream, WORKERS_GROUP, self.name)
        except BaseException:
            del self.owned[number]
            with contextlib.suppress(RedisError, OSError):
                await self.leases.release(number)
            raise
        readable = [(entry, self._decode(shard, entry)) for entry in claimed]
        waiting = [(entry, item) for entry, item in readable if item is not None]
        try:
            abandoned = await self._charge([item for _entry, item in waiting])
        except Exception:  # the database said no: replay them all rather than leave them pending
            log.exception("worker %s: shard %d: charging the replays failed", self.name, number)
            abandoned = {}
        for (entry_id, _fields), item in waiting:
            if item.event.id in abandoned.get(item.bot, set()):
                self._spawn(shard, self._done(shard, entry_id))
            else:
                self._schedule(shard, entry_id, item, replay=True)
        self.claimed += len(claimed)
        if claimed:  # a worker went away without finishing them (a clean stop leaves none)
            log.warning(
                "worker %s: shard %d taken over with %d pending entries", self.name, number, len(claimed)
            )
        shard.reading = True
        self._changed.set()
        return shard

    async def _charge(self, items: list[Inbound]) -> dict[str, set[str]]:
        """An attempt more for the message each chat was handling when the shard's owner went
        (the first claimed one, unless its reply was recorded); those at their last are abandoned."""
        first: dict[tuple[str, str, str], Inbound] = {}
        for item in items:
            first.setdefault((item.bot, item.channel, item.event.channel.canonical), item)
        keys = {reply_key(i.bot, i.event.id): i for i in first.values()}
        recorded = await self.host.outbox.recorded_keys(list(keys))
        charged: dict[str, list[str]] = {}
        for key, item in keys.items():
            if key not in recorded:
                charged.setdefault(item.bot, []).append(item.event.id)
        return {bot: await self.host.inbox.charge(bot, ids) for bot, ids in charged.items()}

    async def _give_up(self, shard: Shard) -> None:
        """Stop reading a shard, finish what was read from it, then free its lease."""
        async with self._read_lock:  # no read naming this shard is under way after this
            shard.reading = False
        if shard.jobs:
            await asyncio.wait(set(shard.jobs))
        if self.owned.get(shard.number) is shard:
            del self.owned[shard.number]
            with contextlib.suppress(RedisError, OSError):
                await self.leases.release(shard.number)
            log.info("worker %s: shard %d given up (rebalancing)", self.name, shard.number)

    def _lose(self, number: int) -> None:
        """The lease expired or another worker holds it: drop the shard's work at once (its entries
        stay pending for the new owner, which handles them as replays)."""
        shard = self.owned.pop(number, None)
        if shard is None:
            return
        shard.reading = False
        for job in shard.jobs:
            job.cancel()
        log.warning(
            "worker %s: lost the lease on shard %d; its work is left to the new owner", self.name, number
        )

    # -- reading and handling ----------------------------------------------------------------------
    async def _read(self) -> None:
        while self._running:
            streams = {s.stream: s for s in self.owned.values() if s.reading}
            room = 2 * self.concurrency - len(self._jobs)  # read ahead: the next ones wait queued
            if not streams or room <= 0:
                waiting_for = self._changed if not streams else self._room
                waiting_for.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiting_for.wait(), 1.0)
                continue
            try:
                async with self._read_lock:
                    streams = {s.stream: s for s in self.owned.values() if s.reading}
                    count = max(1, room // len(streams))  # COUNT is per stream
                    found = await self.bus.read(WORKERS_GROUP, self.name, streams, count, READ_BLOCK_MS)
                    for stream, (entry_id, fields) in found:
                        shard = streams[stream]
                        item = self._decode(shard, (entry_id, fields))
                        if item is not None:
                            self._schedule(shard, entry_id, item, replay=item.again)
            except (RedisError, OSError) as exc:
                log.error("worker %s: reading the shards failed (%s); trying again in 1 s", self.name, exc)
                await asyncio.sleep(1.0)

    def _decode(self, shard: Shard, entry: Entry) -> Inbound | None:
        entry_id, fields = entry
        try:
            item = decode_inbound(fields)
        except MalformedEntry as exc:
            why = str(exc)
        else:
            if item.bot in self.host.bots:
                try:
                    self.host.bots[item.bot].channel(item.channel)
                    return item
                except LookupError as exc:
                    why = str(exc)
            else:
                why = f"this worker runs no bot {item.bot!r} (do the configs differ?)"
        log.error("entry %s on %s refused: %s; moved to %s", entry_id, shard.stream, why, self.bus.keys.dead)
        self._spawn(shard, self.bus.bury(shard.stream, WORKERS_GROUP, entry_id, fields, why))
        return None

    def _schedule(self, shard: Shard, entry_id: str, item: Inbound, *, replay: bool) -> None:
        """Queue one message in its chat (synchronously: stream order is handling order)."""
        bot = self.host.bots[item.bot]
        turn = self.host.order.turn((item.bot, item.channel, item.event.channel.canonical))
        task = self._spawn(shard, self._handle(shard, entry_id, bot, item, turn, replay))
        # a job cancelled before it ran (a lost shard) never entered its turn: let the chat go on
        task.add_done_callback(lambda _task: turn.release())

    async def _handle(
        self, shard: Shard, entry_id: str, bot: Bot, item: Inbound, turn: Turn, replay: bool
    ) -> None:
        channel = bot.channel(item.channel)
        async with turn, self._slots:  # a slot only once it is the chat's turn: no chat blocks others
            if isinstance(channel, RemoteChannel) and not channel.described:
                await self._refresh_channels()
            await bot.pipeline.handle(item.event, channel, replay=replay)  # errors are logged there
            await self.host.inbox.finish(bot.name, item.event)
        await self._done(shard, entry_id)
        self.handled += 1

    async def _done(self, shard: Shard, entry_id: str) -> None:
        """Acknowledge a finished entry, once Redis answers (an entry left pending with this worker
        stays so until its shard changes owner: nobody else claims it)."""
        await until_redis_answers(
            lambda: self.bus.done(shard.stream, WORKERS_GROUP, entry_id),
            f"worker {self.name}: acknowledging entry {entry_id} of shard {shard.number}",
        )

    def _spawn(self, shard: Shard, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._jobs.add(task)
        shard.jobs.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._jobs.discard(done)
            shard.jobs.discard(done)
            self._room.set()
            if not done.cancelled() and done.exception() is not None:
                log.error(
                    "worker %s: an entry of shard %d failed: %r", self.name, shard.number, done.exception()
                )

        task.add_done_callback(finished)
        return task

    async def _refresh_channels(self) -> None:
        missing = describe_missing(self.channels, await self.bus.channels())
        if missing:
            log.info("worker %s: no gateway has described %s yet", self.name, ", ".join(missing))
