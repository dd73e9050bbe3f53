"""Which Pusher channels have subscribers, deployment-wide: for the HTTP API's channel
queries and the ``channel_occupied``/``channel_vacated`` webhooks.

Each process counts its own sockets per (app, Pusher channel name). Memory
(embedded mode): that count is the deployment's. Redis (cluster mode): each channel
has a sorted set of the processes holding it, scored by when their claim expires,
and a hash of their subscription counts. A process writes its count whenever it changes
(one script, which also says whether the channel as a whole became occupied or
vacated, so exactly one process reports each transition), and refreshes its claims
every ``timeout / 3`` seconds. A process that dies stops refreshing; a
reaper (one process at a time, by a lock) drops claims past their expiry and reports
the channels that emptied. So a crashed process's channels are vacated within
``timeout`` plus a few seconds, never left occupied for ever.

Every key shares the ``{pusher}`` hash tag, so the scripts' keys live in one slot: on
a Redis Cluster each script runs on that slot's master (redis-py routes it by its
first key), and the reaper scans only that master.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import suppress

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from streams.redis_client import REDIS_DOWN, AnyRedis, every

log = structlog.get_logger(__name__)

OCCUPIED = "channel_occupied"
VACATED = "channel_vacated"
REAP_SECONDS = 5.0
UNAVAILABLE = "pusher.occupancy_redis_unavailable"

# (app id, Pusher channel name, OCCUPIED or VACATED)
OnChange = Callable[[str, str, str], None]

# KEYS: the channel's process set, its counts hash, the app's set of occupied names.
# ARGV: process, count (-1: only drop expired claims), expiry ms, now ms, name.
# Returns {holders before dropping expired claims, after dropping them, at the end}.
SET_CLAIM = """
local cleared = redis.call('ZCARD', KEYS[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
for _, holder in ipairs(expired) do
  redis.call('ZREM', KEYS[1], holder)
  redis.call('HDEL', KEYS[2], holder)
end
local before = redis.call('ZCARD', KEYS[1])
local count = tonumber(ARGV[2])
if count > 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], count)
  redis.call('SADD', KEYS[3], ARGV[5])
elseif count == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
local after = redis.call('ZCARD', KEYS[1])
if after == 0 then
  redis.call('SREM', KEYS[3], ARGV[5])
  redis.call('DEL', KEYS[1], KEYS[2])
end
return {cleared, before, after}
"""


def transitions(cleared: int, before: int, after: int) -> list[str]:
    """What a claim change did to the channel as a whole (:data:`SET_CLAIM`'s answer)."""
    found = []
    if cleared > 0 and before == 0:
        found.append(VACATED)  # only dead processes held it: it was empty already
    if before == 0 and after > 0:
        found.append(OCCUPIED)
    elif before > 0 and after == 0:
        found.append(VACATED)
    return found


class Occupancy(ABC):
    """This process's Pusher subscriptions per channel, and the deployment's view."""

    def __init__(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._local: dict[tuple[str, str], int] = {}
        # Claims go out one at a time: a 0 -> 1 still in flight must not be
        # overtaken by the 1 -> 0 that follows it on another pooled connection.
        self._claiming = asyncio.Lock()

    @abstractmethod
    async def start(self) -> None:
        """Start background work (refresh, reaper)."""

    @abstractmethod
    async def close(self) -> None:
        """Give up this process's claims."""

    async def add(self, app_id: str, name: str) -> None:
        await self._change(app_id, name, +1)

    async def remove(self, app_id: str, name: str) -> None:
        await self._change(app_id, name, -1)

    async def _change(self, app_id: str, name: str, delta: int) -> None:
        key = (app_id, name)
        before = self._local.get(key, 0)
        count = max(before + delta, 0)
        if count:
            self._local[key] = count
        else:
            self._local.pop(key, None)
        async with self._claiming:
            await self._claim(app_id, name, before, count)

    def _report(self, app_id: str, name: str, events: list[str]) -> None:
        for event in events:
            self._on_change(app_id, name, event)

    @abstractmethod
    async def _claim(self, app_id: str, name: str, before: int, count: int) -> None:
        """This process held ``before`` subscriptions of the channel and now ``count``."""

    @abstractmethod
    async def channels(self, app_id: str) -> dict[str, int]:
        """Occupied channels of the app and their subscription counts."""

    @abstractmethod
    async def claim_event(self, key: str) -> bool:
        """True for exactly one process per ``key`` (a presence event to report)."""


class MemoryOccupancy(Occupancy):
    """Embedded mode: one process, so its counts are the deployment's."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._local.clear()

    async def _claim(self, app_id: str, name: str, before: int, count: int) -> None:
        if before == 0 and count > 0:
            self._report(app_id, name, [OCCUPIED])
        elif before > 0 and count == 0:
            self._report(app_id, name, [VACATED])

    async def channels(self, app_id: str) -> dict[str, int]:
        return {name: n for (app, name), n in self._local.items() if app == app_id}

    async def claim_event(self, key: str) -> bool:
        return True


class RedisOccupancy(Occupancy):
    def __init__(
        self, client: AnyRedis, *, prefix: str, timeout_seconds: float, on_change: OnChange
    ) -> None:
        super().__init__(on_change)
        self._client = client
        self._base = f"{prefix}:{{pusher}}"
        self._timeout_ms = int(timeout_seconds * 1000)
        self._timeout = timeout_seconds
        self._process = secrets.token_hex(6)
        self._script = client.register_script(SET_CLAIM)
        self._tasks: list[asyncio.Task[None]] = []

    def _keys(self, app_id: str, name: str) -> list[str]:
        base = self._base
        return [
            f"{base}:occ:{app_id}:{name}",
            f"{base}:subs:{app_id}:{name}",
            f"{base}:names:{app_id}",
        ]

    def _args(self, name: str, count: int) -> list[str | int]:
        now = int(time.time() * 1000)
        return [self._process, count, now + self._timeout_ms, now, name]

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                every(self._timeout / 3, self._refresh, UNAVAILABLE), name="pusher-occupancy"
            ),
            asyncio.create_task(every(REAP_SECONDS, self._reap, UNAVAILABLE), name="pusher-reaper"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        for app_id, name in list(self._local):
            try:
                await self._claim(app_id, name, 1, 0)
            except REDIS_DOWN as exc:
                log.warning("pusher.occupancy_release_failed", error=repr(exc))
                break  # the rest expire and are reaped
        self._local.clear()

    async def _claim(self, app_id: str, name: str, before: int, count: int) -> None:
        answer = await self._script(keys=self._keys(app_id, name), args=self._args(name, count))
        self._report(app_id, name, transitions(*(int(x) for x in answer)))

    async def _claims(self, claims: list[tuple[str, str, int]]) -> None:
        """:data:`SET_CLAIM` for many channels in one round trip, each change reported."""
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for app_id, name, count in claims:
                keys = self._keys(app_id, name)
                pipe.evalsha(self._script.sha, len(keys), *keys, *self._args(name, count))
            try:
                answers = await pipe.execute()
                break
            except NoScriptError:
                # A Redis without the script (restarted, or a cluster master just
                # promoted) answers NOSCRIPT: load it and go once more.
                if attempt:
                    raise
                await self._client.script_load(SET_CLAIM)
        for (app_id, name, _), answer in zip(claims, answers, strict=True):
            self._report(app_id, name, transitions(*(int(x) for x in answer)))

    async def _refresh(self) -> None:
        """Extend this process's claims (and store its current counts)."""
        if self._local:
            await self._claims([(app_id, name, n) for (app_id, name), n in self._local.items()])

    async def _reap(self) -> None:
        """Drop expired claims of every channel; one process per round, by a lock."""
        got = await self._client.set(
            f"{self._base}:reaper", self._process, nx=True, px=int(REAP_SECONDS * 800)
        )
        if not got:
            return
        pattern = f"{self._base}:names:*"
        if isinstance(self._client, RedisCluster):
            # A cluster's SCAN would walk every master; the keys are all on the tag's.
            node = self._client.get_node_from_key(self._base)
            keys = self._client.scan_iter(match=pattern, count=100, target_nodes=node)
        else:
            keys = self._client.scan_iter(match=pattern, count=100)
        async for key in keys:
            app_id = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1]
            names = await self._client.smembers(key)
            decoded = [n.decode() if isinstance(n, bytes) else n for n in names]
            if decoded:
                await self._claims([(app_id, name, -1) for name in decoded])

    async def channels(self, app_id: str) -> dict[str, int]:
        names = await self._client.smembers(f"{self._base}:names:{app_id}")
        found: dict[str, int] = {}
        for raw in names:
            name = raw.decode() if isinstance(raw, bytes) else raw
            counts = await self._client.hvals(self._keys(app_id, name)[1])
            total = sum(int(c) for c in counts)
            if total:
                found[name] = total
        return found

    async def claim_event(self, key: str) -> bool:
        return bool(await self._client.set(f"{self._base}:hook:{key}", 1, nx=True, px=60_000))
