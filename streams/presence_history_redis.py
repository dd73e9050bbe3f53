"""Cluster-mode presence history in Redis: one hash per slot, written once.

Keys (``B`` is ``{prefix}:{metrics}``, one hash tag, one slot)::

    B:p:{slot}   HASH  presence key (channel) -> members, online@{inst} -> online
                       count, @by -> the writing process; expires an hour (and two
                       intervals) after it is written

The write is one script that stores the sample only if the slot's hash does not
exist yet, so two processes sampling the same slot leave exactly one sample. The
script names its hash in KEYS: on a Redis Cluster that is how redis-py sends it to
the master of the hash's slot.
"""

from __future__ import annotations

from streams.presence_history import PresenceHistoryStore
from streams.redis_client import resilient_client

BY = "@by"  # always present in a written sample, even one with nobody online

# KEYS[1] = the slot's hash; ARGV[1] = ttl seconds, then field, value, ...
WRITE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class RedisPresenceHistory(PresenceHistoryStore):
    kind = "redis"

    def __init__(self, url: str, *, prefix: str, interval: float) -> None:
        super().__init__(interval=interval)
        self._client = resilient_client(url, retries=3)
        self._base = f"{prefix}:{{metrics}}"
        self._write = self._client.register_script(WRITE_ONCE)

    def slot_key(self, slot: int) -> str:
        return f"{self._base}:p:{slot}"

    async def start(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def taken(self, slot: int) -> bool:
        return bool(await self._client.exists(self.slot_key(slot)))

    async def write(self, slot: int, sample: dict[str, int], by: str) -> bool:
        args: list[str | int] = [self.ttl_seconds, BY, by]
        for key, count in sample.items():
            args += [key, count]
        return bool(await self._write(keys=[self.slot_key(slot)], args=args))

    async def read(self, key: str, first: int, last: int) -> dict[int, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            for slot in range(first, last + 1):
                pipe.hmget(self.slot_key(slot), [BY, key])
            answers = await pipe.execute()
        return {
            slot: int(count or 0)
            for slot, (by, count) in zip(range(first, last + 1), answers, strict=True)
            if by is not None
        }
