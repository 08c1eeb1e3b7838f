"""The worker's side of sending: replies are recorded, then handed to the gateway holding the channel.

A worker holds no platform connection. Its bots' channels are :class:`RemoteChannel` s (what the
gateway published about the real channel: platform, length limit and unit, so replies are split
exactly as the gateway's adapter would), and its outbox is a :class:`HandOverOutbox`: a reply is
recorded under its idempotency key (every part "pending", committed) and then its key goes on the
channel's outbound stream; the gateway sends the parts not sent yet, in order, and marks each sent.
Handing a key over twice (a redelivered message whose reply was recorded) sends nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select

from bots.core.adapter import Adapter, Capabilities, EventSink
from bots.core.events import Outbound, SentRef, channel_from_dict
from bots.core.groupcommit import GroupCommit
from bots.core.outbox import Outbox
from bots.core.storage import Database, OutboxEntry
from bots.scale.bus import ChannelInfo, until_redis_answers
from bots.scale.codec import HandOver

log = logging.getLogger("bots.scale")
HandOverFn = Callable[[HandOver], Awaitable[None]]


class RemoteChannel:
    """A bot's channel as a worker sees it: held by a gateway, described in Redis."""

    def __init__(self, bot: str, name: str, hand_over: HandOverFn, info: ChannelInfo | None = None) -> None:
        self.bot = bot
        self.name = name
        self._hand_over = hand_over
        self.platform = ""
        self.capabilities = Capabilities(streaming=False)
        self.described = False
        if info is not None:
            self.describe(info)

    def describe(self, info: ChannelInfo) -> None:
        self.platform = info.platform
        self.capabilities = info.capabilities
        self.described = True

    async def start(self, sink: EventSink) -> None:
        """Nothing to connect: the gateway holds the connection and the worker reads the streams."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def send(self, outbound: Outbound) -> SentRef:
        """A post without an idempotency key (nothing recorded): the gateway sends it as it is.
        The platform's message id is not known here (empty)."""
        await self._hand_over(HandOver("post", self.bot, self.name, outbound.target, outbound=outbound))
        return SentRef(outbound.target.platform, outbound.target.id, "")


class HandOverOutbox(Outbox):
    """An outbox whose messages are sent by the gateway that holds the channel."""

    def __init__(
        self, db: Database, writes: GroupCommit, hand_over: HandOverFn, *, keep: timedelta = timedelta(days=3)
    ) -> None:
        super().__init__(db, writes, keep=keep)
        self._hand_over = hand_over

    async def deliver(
        self, bot: str, adapter: Adapter, outbound: Outbound, key: str, *, fresh: bool = False
    ) -> list[SentRef]:
        """Record it (committed), then hand its key over; the sends happen at the gateway."""
        if await self.record(bot, adapter, outbound, key):
            await self._hand_key_over(HandOver("key", bot, adapter.name, outbound.target, key=key))
        return []

    async def resume(self, key: str, adapter_for: Callable[[str], Adapter]) -> list[SentRef]:
        """A recorded message (a replay): hand its key over again; the gateway sends what is left."""
        async with self._db.session() as session:
            entry = await session.scalar(select(OutboxEntry).where(OutboxEntry.key == key).limit(1))
        if entry is None:
            log.warning("outbox %s: nothing recorded under this key; nothing to hand over", key)
            return []
        await self._hand_key_over(
            HandOver("key", entry.bot, entry.channel, channel_from_dict(entry.target), key=key)
        )
        return []

    async def _hand_key_over(self, item: HandOver) -> None:
        """Hand a recorded key over, waiting for Redis if it is unreachable: the message is
        finished and its entry acknowledged after this, so a hand-over given up was a reply
        recorded and never sent (the pipeline logs errors and goes on)."""
        await until_redis_answers(lambda: self._hand_over(item), f"outbox {item.key}: handing it over")


def describe_missing(channels: list[RemoteChannel], known: dict[tuple[str, str], ChannelInfo]) -> list[str]:
    """Describe the channels ``known`` has; the names (bot/channel) of those still unknown."""
    missing = []
    for channel in channels:
        info = known.get((channel.bot, channel.name))
        if info is not None:
            channel.describe(info)
        elif not channel.described:
            missing.append(f"{channel.bot}/{channel.name}")
    return missing
