"""Shard leases: a worker owns a shard stream while its lease key holds the worker's name.

``SET lease NX PX ttl`` takes a free shard; the owner renews it (a script: only while the value is
still its own) every third of the ttl; a clean stop deletes it (same check). A worker that dies
(kill -9) stops renewing, so its shards are free after at most ``ttl`` and another worker takes
them, with their pending entries. A worker that finds a lease gone or taken stops working that
shard at once.
"""

from __future__ import annotations

from redis.asyncio import Redis

from bots.scale.bus import Keys

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    def __init__(self, redis: Redis, keys: Keys, owner: str, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, shard: int) -> bool:
        return bool(await self.redis.set(self.keys.lease(shard), self.owner, nx=True, px=self.ttl_ms))

    async def renew(self, shards: list[int]) -> set[int]:
        """Renew the leases on ``shards``; the shards whose lease this worker no longer holds."""
        if not shards:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                await self._renew(keys=[self.keys.lease(shard)], args=[self.owner, self.ttl_ms], client=pipe)
            results = await pipe.execute()
        return {shard for shard, kept in zip(shards, results, strict=True) if not kept}

    async def release(self, shard: int) -> None:
        await self._release(keys=[self.keys.lease(shard)], args=[self.owner])

    async def owners(self, shards: int) -> list[str | None]:
        """Who holds each shard's lease (None: free)."""
        return list(await self.redis.mget([self.keys.lease(n) for n in range(shards)]))
