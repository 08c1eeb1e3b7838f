"""The Redis side: key names, shards, the scripts and stream calls gateways and workers share.

Keys (``prefix`` defaults to ``bots``):

- ``{prefix}:in:{n}``: inbound shard stream ``n`` (consumer group ``workers``); a chat's messages
  always go to one shard (:func:`shard_of`), so one owner at a time sees them in order;
- ``{prefix}:out:{bot}:{channel}``: hand-overs to the gateway holding that channel (group ``gateway``);
- ``{prefix}:seen:{bot}:{event id}``: set with the inbound entry, atomically (a script): an event is
  published once however often the platform delivers it or a gateway restarts;
- ``{prefix}:lease:{n}``: the worker that owns shard ``n`` (SET NX PX, renewed while it lives);
- ``{prefix}:workers``: live workers (sorted set, score = last heartbeat, ms);
- ``{prefix}:channels``: what each gateway channel is (platform, limits), for the workers;
- ``{prefix}:meta``: the shard count every process must agree on;
- ``{prefix}:dead``: entries no process could read, kept for an operator.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from bots.core.adapter import Capabilities
from bots.core.ordering import ChatKey
from bots.scale.codec import HandOver, encode_hand_over

log = logging.getLogger("bots.scale")

WORKERS_GROUP = "workers"
GATEWAY_GROUP = "gateway"
Entry = tuple[str, dict[str, Any]]  # (stream id, fields)
T = TypeVar("T")
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)  # Redis restarting, a network blip

# the inbound entry only when its event was never published: marker and entry in one step
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
end
return false
"""


async def until_redis_answers(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``await call()``, tried again while Redis is unreachable (0.1 s doubling to 2 s between
    tries; the first failure logged); only cancellation (a lost shard, a stop) ends the wait. For steps
    that must happen once Redis is back (a recorded reply's hand-over, an entry's XACK): giving
    them up would leave a reply unsent or an entry pending until its shard changes owner."""
    try:
        return await call()
    except UNREACHABLE as exc:
        log.error("%s failed (%s); trying again until Redis answers", what, exc)
    retrying = AsyncRetrying(
        wait=wait_exponential(multiplier=0.1, max=2.0),
        retry=retry_if_exception_type(UNREACHABLE),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity returns or raises")


class ScaleMismatch(RuntimeError):
    """This process's scale settings disagree with the processes already running."""


def shard_of(chat: ChatKey, shards: int) -> int:
    """The shard of a chat: a stable hash (the same in every process) of (bot, channel, chat)."""
    return zlib.crc32("\x1f".join(chat).encode("utf-8")) % shards


@dataclass(frozen=True)
class Keys:
    prefix: str = "bots"

    def inbound(self, shard: int) -> str:
        return f"{self.prefix}:in:{shard}"

    def outbound(self, bot: str, channel: str) -> str:
        return f"{self.prefix}:out:{bot}:{channel}"

    def seen(self, bot: str, event_id: str) -> str:
        return f"{self.prefix}:seen:{bot}:{event_id}"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}:lease:{shard}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def channels(self) -> str:
        return f"{self.prefix}:channels"

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"


class Bus:
    """Stream operations on one Redis connection pool (``decode_responses=True``)."""

    def __init__(self, redis: Redis, keys: Keys, shards: int) -> None:
        self.redis = redis
        self.keys = keys
        self.shards = shards
        self._publish_once = redis.register_script(_PUBLISH_ONCE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def check_shards(self) -> None:
        """Record the shard count, or refuse when the running processes use another one (a chat
        would then have two shards, and two owners)."""
        await self.redis.hsetnx(self.keys.meta, "shards", self.shards)
        known = int(await self.redis.hget(self.keys.meta, "shards") or self.shards)
        if known != self.shards:
            raise ScaleMismatch(
                f"Redis at this prefix ({self.keys.prefix!r}) is used with {known} shards, this "
                f"process has {self.shards}: set [scale] shards = {known} (every gateway and worker alike)"
            )

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def publish_once(
        self, bot: str, event_id: str, shard: int, fields: dict[str, str], ttl_ms: int
    ) -> bool:
        """Append an inbound entry unless this event was published before; True when appended."""
        added = await self._publish_once(
            keys=[self.keys.seen(bot, event_id), self.keys.inbound(shard)], args=[ttl_ms, fields["m"]]
        )
        return bool(added)

    async def hand_over(self, item: HandOver) -> None:
        """Put a worker's hand-over on the outbound stream of the channel it is for."""
        await self.redis.xadd(self.keys.outbound(item.bot, item.channel), encode_hand_over(item))

    async def done(self, stream: str, group: str, entry_id: str) -> None:
        """Acknowledge an entry and drop it: a work queue keeps nothing it finished."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, group, entry_id)
            pipe.xdel(stream, entry_id)
            await pipe.execute()

    async def bury(self, stream: str, group: str, entry_id: str, fields: dict[str, Any], why: str) -> None:
        """Move an unreadable entry to the dead-letter stream (kept for an operator), then drop it."""
        await self.redis.xadd(
            self.keys.dead,
            {"from": stream, "id": entry_id, "why": why[:500], "m": str(fields)[:10_000]},
            maxlen=10_000,
        )
        await self.done(stream, group, entry_id)

    async def claim_all(self, stream: str, group: str, consumer: str) -> list[Entry]:
        """Every pending entry of ``stream``'s group, taken over by ``consumer``, oldest first (the
        caller owns the stream: whoever had them is gone or gave them up)."""
        claimed: list[Entry] = []
        start = "0-0"
        while True:
            reply = await self.redis.xautoclaim(stream, group, consumer, 0, start_id=start, count=200)
            start, entries = reply[0], reply[1]
            for entry_id in reply[2] if len(reply) > 2 else ():  # pending, but deleted from the stream
                await self.redis.xack(stream, group, entry_id)
            claimed.extend((entry_id, fields) for entry_id, fields in entries if fields is not None)
            if start in ("0-0", b"0-0"):
                return claimed

    async def read(
        self, group: str, consumer: str, streams: Iterable[str], count: int, block_ms: int
    ) -> list[tuple[str, Entry]]:
        """New entries of ``streams`` for ``consumer`` (blocks up to ``block_ms``): (stream, entry)."""
        wanted = {stream: ">" for stream in streams}
        if not wanted or count <= 0:
            return []
        reply = await self.redis.xreadgroup(group, consumer, wanted, count=count, block=block_ms)
        found: list[tuple[str, Entry]] = []
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for stream, entries in items:
            if isinstance(entries, list) and entries and isinstance(entries[0], list):  # RESP3 nesting
                entries = entries[0]
            found.extend((stream, (entry_id, fields)) for entry_id, fields in entries)
        return found

    # -- channels the gateways hold, as the workers need to know them ---------------------------
    async def describe_channel(
        self, bot: str, channel: str, platform: str, caps: Capabilities, gateway: str
    ) -> None:
        info = {
            "platform": platform,
            "max_length": caps.max_length,
            "length_unit": caps.length_unit,
            "markup": sorted(caps.markup),
            "threads": caps.threads,
            "proactive": caps.proactive,
            "gateway": gateway,
        }
        await self.redis.hset(self.keys.channels, f"{bot}/{channel}", json.dumps(info))

    async def channels(self) -> dict[tuple[str, str], ChannelInfo]:
        found: dict[tuple[str, str], ChannelInfo] = {}
        for field, raw in (await self.redis.hgetall(self.keys.channels)).items():
            bot, _, channel = field.partition("/")
            try:
                found[(bot, channel)] = ChannelInfo.from_json(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("channel description %s is unreadable (%s); ignored", field, exc)
        return found


@dataclass(frozen=True)
class ChannelInfo:
    platform: str
    capabilities: Capabilities

    @classmethod
    def from_json(cls, raw: str) -> ChannelInfo:
        data = json.loads(raw)
        caps = Capabilities(
            max_length=data["max_length"],
            length_unit=data["length_unit"],
            markup=frozenset(data["markup"]),
            streaming=False,  # a reply is handed over whole: the gateway sends it
            threads=bool(data.get("threads", False)),
            proactive=bool(data.get("proactive", True)),
        )
        return cls(str(data["platform"]), caps)
