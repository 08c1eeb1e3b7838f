"""``bots gateway``: holds the platform connections of its bots; records, publishes, sends.

Inbound: a message is recorded in the inbox (as ``bots run`` does: a redelivered one is dropped),
then published to the shard stream of its chat, and only then does the channel acknowledge it to
the platform (Telegram's offset, a webhook's 200). Publishing goes through a script that sets a
marker with the entry, so an event is published once however often it is delivered. A chat's
messages are published in the order they arrived (a turn per chat, taken before the inbox write).

Outbound: workers hand over the keys of replies they recorded on the channel's outbound stream; the
gateway sends each key's unsent parts in order (the outbox's ``resume``), one chat at a time in
stream order, chats concurrently, through the one adapter (and rate limiter) of the channel, and
acknowledges the entry after the parts are marked sent.

At start it takes over what an earlier run of it left: outbox parts still pending, hand-overs read
and not acknowledged, and accepted messages that never reached a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from bots.core.adapter import Adapter, EventSink, NotAccepted
from bots.core.events import ChannelRef, MessageEvent
from bots.core.groupcommit import GroupCommit
from bots.core.inbox import Inbox
from bots.core.ordering import ChatKey, ChatOrder, Turn
from bots.core.outbound import send_part
from bots.core.outbox import Outbox
from bots.core.storage import Database
from bots.scale.bus import GATEWAY_GROUP, Bus, Entry, ScaleMismatch, shard_of
from bots.scale.codec import HandOver, Inbound, MalformedEntry, decode_hand_over, encode_inbound

log = logging.getLogger("bots.scale.gateway")
READ_BLOCK_MS = 1000


class Gateway:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        bots: dict[str, list[Adapter]],
        *,
        name: str,
        concurrency: int = 256,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.db = db
        self.bus = bus
        self.bots = bots
        self.name = name
        self.concurrency = concurrency  # hand-overs being sent at once (all chats)
        self.stop_grace_s = stop_grace_s
        self.writes = GroupCommit(db)
        self.inbox = Inbox(db, self.writes)
        self.outbox = Outbox(db, self.writes)
        self.inbound_order = ChatOrder()  # publishing keeps each chat's arrival order
        self.outbound_order = ChatOrder()  # sending keeps each chat's hand-over order
        self.published = 0
        self.sent_keys = 0
        self._channels = {(bot, a.name): a for bot, adapters in bots.items() for a in adapters}
        self._running = False
        self._started: list[Adapter] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._ttl_ms = int(self.inbox.replay_window.total_seconds() * 1000)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.bus.check_shards()
        await self.db.start()
        await self.writes.start()
        await self.inbox.count_abandoned()
        self._running = True
        try:
            await self._announce()
            leftovers = await self._take_over()
            for (bot, _name), adapter in self._channels.items():
                await adapter.start(self._sink(bot, adapter))
                self._started.append(adapter)
                log.info(
                    "gateway %s: bot %s channel %s (%s) started",
                    self.name,
                    bot,
                    adapter.name,
                    adapter.platform,
                )
            for queue in leftovers:  # sent once the channels started (an adapter refuses sends before)
                queue()
            self._reader = asyncio.create_task(self._read(), name="gateway-outbound")
            await self.inbox.prune()
            await self.outbox.prune()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=self.stop_grace_s)
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        for adapter in reversed(self._started):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping channel %s failed", adapter.name)
        self._started.clear()
        await self.writes.close()
        await self.db.close()
        await self.bus.close()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _announce(self) -> None:
        """What Redis must hold of this gateway: its channels' descriptions (for the workers) and
        the consumer group of their outbound streams. At start, and again when Redis lost them."""
        for (bot, _name), adapter in self._channels.items():
            await self.bus.describe_channel(
                bot, adapter.name, adapter.platform, adapter.capabilities, self.name
            )
            await self.bus.ensure_group(self.bus.keys.outbound(bot, adapter.name), GATEWAY_GROUP)

    async def _take_over(self) -> list[Callable[[], object]]:
        """What an earlier run left: messages accepted and never published are published now;
        replies half-sent, then hand-overs read and not acknowledged, are returned in that order,
        to be queued once the channels have started."""
        leftovers: list[Callable[[], object]] = []
        for bot in self.bots:
            for pending in await self.outbox.pending(bot, within=self.inbox.replay_window):
                adapter = self._channels.get((bot, pending.channel))
                if adapter is not None:
                    leftovers.append(
                        functools.partial(self._resend, bot, adapter, pending.key, pending.target)
                    )
        for bot, channel in self._channels:
            stream = self.bus.keys.outbound(bot, channel)
            for entry in await self.bus.claim_all(stream, GATEWAY_GROUP, self.name):
                leftovers.append(functools.partial(self._schedule, stream, entry))
        await self._publish_unfinished()
        return leftovers

    async def _publish_unfinished(self) -> None:
        """Publish (again) the messages accepted and not finished: an earlier run's, or those a
        Redis that lost its data lost (a worker handles one already answered as a replay)."""
        for bot in self.bots:
            for item in await self.inbox.unfinished(bot):
                try:
                    if (bot, item.channel) in self._channels:
                        await self._publish(bot, item.channel, item.event, again=True)
                finally:
                    self.inbox.release(bot, item.event)

    def _resend(self, bot: str, adapter: Adapter, key: str, target: ChannelRef) -> None:
        """Queue the unsent parts of a reply an earlier run left, in its chat."""
        turn = self.outbound_order.turn((bot, adapter.name, target.canonical))
        self._spawn(self._send_key(adapter, key, turn, None)).add_done_callback(lambda _t: turn.release())

    # -- inbound -------------------------------------------------------------------------------
    def _sink(self, bot: str, adapter: Adapter) -> EventSink:
        async def sink(event: MessageEvent) -> asyncio.Future[None] | None:
            if not self._running:
                raise NotAccepted(f"event {event.id} arrived while the gateway is stopped")
            turn = self.inbound_order.turn((bot, adapter.name, event.channel.canonical))
            try:
                accepted = await self.inbox.accept(bot, adapter.name, event)
            except BaseException:
                turn.release()
                raise
            if accepted is None:
                turn.release()
                log.debug("event %s: duplicate delivery dropped", event.id)
                return None
            try:
                async with turn:
                    await self._publish(bot, adapter.name, event, again=accepted == "again")
            finally:
                self.inbox.release(bot, event)
            return None

        return sink

    async def _publish(self, bot: str, channel: str, event: MessageEvent, *, again: bool) -> None:
        chat: ChatKey = (bot, channel, event.channel.canonical)
        fields = encode_inbound(Inbound(bot, channel, event, again=again, accepted_at=datetime.now(UTC)))
        shard = shard_of(chat, self.bus.shards)
        if await self.bus.publish_once(bot, event.id, shard, fields, self._ttl_ms):
            self.published += 1
        else:
            log.debug("event %s: published before; not again", event.id)

    # -- outbound ------------------------------------------------------------------------------
    async def _read(self) -> None:
        streams = [self.bus.keys.outbound(bot, channel) for bot, channel in self._channels]
        while self._running:
            room = self.concurrency - len(self._jobs)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                found = await self.bus.read(GATEWAY_GROUP, self.name, streams, room, READ_BLOCK_MS)
            except (RedisError, OSError) as exc:
                log.error("gateway %s: reading hand-overs failed (%s); trying again in 1 s", self.name, exc)
                await asyncio.sleep(1.0)
                if "NOGROUP" in str(exc):  # Redis restarted without its data: announce again
                    await self._announce_again()
                continue
            for stream, entry in found:
                self._schedule(stream, entry)

    async def _announce_again(self) -> None:
        """Redis lost its data (a restart without persistence): announce this gateway again, send
        the replies whose hand-overs went with the data (recorded, still pending) and publish
        again the messages not finished (their entries may have gone too)."""
        try:
            await self.bus.check_shards()
            await self._announce()
            log.warning(
                "gateway %s: Redis had lost this gateway's groups and channels; made again", self.name
            )
            for bot in self.bots:
                for pending in await self.outbox.pending(bot, within=self.inbox.replay_window):
                    adapter = self._channels.get((bot, pending.channel))
                    if adapter is not None:
                        self._resend(bot, adapter, pending.key, pending.target)
            await self._publish_unfinished()
        except (RedisError, OSError, ScaleMismatch, SQLAlchemyError) as exc:
            log.error("gateway %s: announcing its channels again failed (%s)", self.name, exc)

    def _schedule(self, stream: str, entry: Entry) -> None:
        """Queue one hand-over in its chat (synchronously: read order is send order)."""
        entry_id, fields = entry
        try:
            item = decode_hand_over(fields)
        except MalformedEntry as exc:
            log.error(
                "hand-over %s on %s is unreadable (%s); moved to %s",
                entry_id,
                stream,
                exc,
                self.bus.keys.dead,
            )
            self._spawn(self.bus.bury(stream, GATEWAY_GROUP, entry_id, fields, str(exc)))
            return
        adapter = self._channels.get((item.bot, item.channel))
        if adapter is None:
            why = f"this gateway holds no channel {item.bot}/{item.channel}"
            log.error("hand-over %s on %s: %s; moved to %s", entry_id, stream, why, self.bus.keys.dead)
            self._spawn(self.bus.bury(stream, GATEWAY_GROUP, entry_id, fields, why))
            return
        turn = self.outbound_order.turn((item.bot, item.channel, item.target.canonical))
        if item.kind == "key":
            self._spawn(self._send_key(adapter, item.key, turn, (stream, entry_id))).add_done_callback(
                lambda _t: turn.release()
            )
        else:
            self._spawn(self._send_post(adapter, item, turn, (stream, entry_id))).add_done_callback(
                lambda _t: turn.release()
            )

    async def _send_key(self, adapter: Adapter, key: str, turn: Turn, entry: tuple[str, str] | None) -> None:
        async with turn:
            try:
                await self.outbox.resume(key, lambda _name: adapter)
                self.sent_keys += 1
            except Exception:
                log.exception("outbox %s: sending failed; the rest of it is given up", key)
        if entry is not None:
            await self._done(*entry)

    async def _send_post(self, adapter: Adapter, item: HandOver, turn: Turn, entry: tuple[str, str]) -> None:
        assert item.outbound is not None
        async with turn:
            try:
                await send_part(adapter, item.outbound)
            except Exception:
                log.exception("channel %s: a post could not be sent; given up", adapter.name)
        await self._done(*entry)

    async def _done(self, stream: str, entry_id: str) -> None:
        try:
            await self.bus.done(stream, GATEWAY_GROUP, entry_id)
        except (RedisError, OSError) as exc:  # still pending: sent again at the next start finds it sent
            log.error("hand-over %s on %s: acknowledging failed (%s)", entry_id, stream, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._jobs.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._jobs.discard(done)
            self._room.set()

        task.add_done_callback(finished)
        return task
