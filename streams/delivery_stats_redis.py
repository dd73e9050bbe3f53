"""Cluster-mode delivery numbers in Redis: one hash per minute, increments only.

Keys (``B`` is ``{prefix}:{metrics}``; the hash tag keeps them in one slot, so one
MULTI writes a flush and one pipeline reads an hour, also on a Redis Cluster, where
a transaction must stay in one slot and both go to that slot's master)::

    B:d:{minute}   HASH  n -> deliveries, b0..b11 -> per latency bucket (b11: +Inf),
                         p -> processes that reported in the minute; expires ~65 min
                         after its minute began
    B:procs        ZSET  process id -> unix ms of its last report

A flush is ``HINCRBY`` of what the process delivered since its previous flush, in
a MULTI with its report, so a minute is never half-written and nothing is counted
twice (see :mod:`streams.delivery_stats`).
"""

from __future__ import annotations

from streams.delivery_stats import DeliveryStore, Readout, Row, stats_of
from streams.latency import SLOTS
from streams.redis_client import resilient_client

TTL_SECONDS = 65 * 60  # a minute's hash outlives the hour it is read for
PROCESS_TTL_MS = 3_600_000  # processes silent for an hour are forgotten
FIELDS = ["n", *(f"b{i}" for i in range(SLOTS))]


class RedisDeliveryStore(DeliveryStore):
    kind = "redis"

    def __init__(self, url: str, *, prefix: str) -> None:
        self._client = resilient_client(url, retries=3)
        self._base = f"{prefix}:{{metrics}}"

    def minute_key(self, minute: int) -> str:
        return f"{self._base}:d:{minute}"

    @property
    def processes_key(self) -> str:
        return f"{self._base}:procs"

    async def start(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def add(
        self, process: str, now: float, rows: dict[int, Row], new_minute: int | None
    ) -> None:
        now_ms = int(now * 1000)
        async with self._client.pipeline(transaction=True) as pipe:
            for minute, row in rows.items():
                key = self.minute_key(minute)
                for name, n in zip(FIELDS, row, strict=True):
                    if n:
                        pipe.hincrby(key, name, n)
                pipe.expireat(key, minute * 60 + TTL_SECONDS)
            if new_minute is not None:
                key = self.minute_key(new_minute)
                pipe.hincrby(key, "p", 1)
                pipe.expireat(key, new_minute * 60 + TTL_SECONDS)
            pipe.zadd(self.processes_key, {process: now_ms})
            pipe.zremrangebyscore(self.processes_key, "-inf", now_ms - PROCESS_TTL_MS)
            await pipe.execute()

    async def read(self, now: float, minutes: int, window_seconds: float) -> Readout:
        last = int(now // 60)
        first = last - minutes + 1
        since_ms = int((now - window_seconds) * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            for minute in range(first, last + 1):
                pipe.hgetall(self.minute_key(minute))
            pipe.zcount(self.processes_key, since_ms, "+inf")
            answers = await pipe.execute()
        found = {}
        for minute, raw in zip(range(first, last + 1), answers[:-1], strict=True):
            if raw:
                row = [int(raw.get(name, 0)) for name in FIELDS]
                found[minute] = stats_of(minute, int(raw.get("p", 0)), row)
        return Readout(now, first, last, found, int(answers[-1]))
