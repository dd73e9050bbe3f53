"""Deployment-wide delivery numbers: messages delivered and their latency, per minute.

Every server process counts, in memory, the deliveries it makes in each minute and
their latencies in the buckets of ``edumatrix_delivery_latency_seconds``
(:class:`MinuteCounter`, on the delivery path: a few integer additions, no I/O).
About once a second :class:`DeliveryStats` hands what was counted since the last
flush to a :class:`DeliveryStore` as increments, and says the process is alive.
Readers sum what every process added: memory in embedded mode (one process is the
whole deployment), Redis in cluster mode (``streams/delivery_stats_redis.py``).

Guarantees of every store:

* Increments only. A process adds what it delivered since its last flush, never a
  running total, so a restarted process (a new id, counting from zero) cannot count
  anything twice, and a process that dies stops adding: only what it had not
  flushed yet (at most one flush interval) is lost.
* Minutes are kept a little over an hour; older ones read as never reported.
* A process counts as reporting while its last flush is within the report window
  (a minute by default), whether or not it delivered anything.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from contextlib import suppress
from dataclasses import dataclass, field

import structlog

from streams.latency import LATENCY_BUCKETS, SLOTS, quantile
from streams.tasks import loud

log = structlog.get_logger(__name__)

RETENTION_MINUTES = 62  # an hour of complete minutes, plus the current one and slack
READ_MINUTES = 61  # the last hour's complete minutes and the current one
Row = list[int]  # [deliveries, count in bucket 0, ..., count in the +Inf bucket]


def empty_row() -> Row:
    return [0] * (1 + SLOTS)


class MinuteCounter:
    """This process's deliveries per minute since the last flush (the hot path).

    Single-threaded by design (the event loop's thread): :meth:`add` and
    :meth:`take` never run at the same time.
    """

    __slots__ = ("_end", "_row", "_rows", "_start")

    def __init__(self) -> None:
        self._rows: dict[int, Row] = {}
        # The current minute's row and its bounds in unix seconds: two float
        # comparisons per delivery instead of working out the minute.
        self._start = self._end = 0.0
        self._row: Row = empty_row()

    def add(self, now: float, seconds: float, deliveries: int = 1) -> None:
        """``deliveries`` messages handed over at unix time ``now``, each ``seconds``
        after it was published."""
        if not self._start <= now < self._end:
            self._enter(now)
        row = self._row
        row[0] += deliveries
        row[1 + bisect_left(LATENCY_BUCKETS, seconds)] += deliveries

    def _enter(self, now: float) -> None:
        minute = int(now // 60)
        self._start, self._end = minute * 60.0, minute * 60.0 + 60.0
        self._row = self._rows.setdefault(minute, empty_row())

    def take(self) -> dict[int, Row]:
        """What was counted since the last call, by minute; starts counting afresh."""
        rows, self._rows = self._rows, {}
        self._start = self._end = 0.0
        return rows

    def give_back(self, rows: dict[int, Row], oldest: int) -> None:
        """Rows a flush could not write: count them again (minutes from ``oldest``)."""
        for minute, row in rows.items():
            if minute < oldest:
                continue
            mine = self._rows.setdefault(minute, empty_row())
            for i, n in enumerate(row):
                mine[i] += n
        self._start = self._end = 0.0


@dataclass(frozen=True, slots=True)
class MinuteStats:
    """What every process reported for one minute."""

    minute: int  # unix time // 60
    processes: int  # processes that flushed during the minute
    delivered: int
    buckets: tuple[int, ...]  # per latency bucket, the last one +Inf

    def percentile_ms(self, q: float) -> float | None:
        seconds = quantile(q, self.buckets)
        return None if seconds is None else seconds * 1000


@dataclass(frozen=True, slots=True)
class Readout:
    """The deployment's minutes from ``first`` to ``last`` (absent: nobody reported)."""

    at: float  # unix seconds of the read
    first: int
    last: int
    minutes: dict[int, MinuteStats]
    processes: int  # processes that reported within the report window

    def window(self, minutes: int) -> MinuteStats:
        """The last ``minutes`` minutes (the current one included) as one."""
        span = range(self.last - minutes + 1, self.last + 1)
        rows = [self.minutes[m] for m in span if m in self.minutes]
        buckets = [0] * SLOTS
        for row in rows:
            for i, n in enumerate(row.buckets):
                buckets[i] += n
        return MinuteStats(
            minute=self.last - minutes + 1,
            processes=max((r.processes for r in rows), default=0),
            delivered=sum(r.delivered for r in rows),
            buckets=tuple(buckets),
        )


def stats_of(minute: int, processes: int, row: Row) -> MinuteStats:
    return MinuteStats(minute, processes, row[0], tuple(row[1:]))


class DeliveryStore(ABC):
    """Where processes add their per-minute counts and readers sum them."""

    kind = "abstract"

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def add(
        self, process: str, now: float, rows: dict[int, Row], new_minute: int | None
    ) -> None:
        """Add ``rows`` (increments by minute) and record that ``process`` reported at
        ``now``; ``new_minute``: a minute in which this is the process's first report
        (it then counts among that minute's processes)."""

    @abstractmethod
    async def read(self, now: float, minutes: int, window_seconds: float) -> Readout:
        """The last ``minutes`` minutes up to ``now``'s, and how many processes
        reported within ``window_seconds`` of ``now``."""


@dataclass
class _MemoryMinute:
    row: Row = field(default_factory=empty_row)
    processes: int = 0


class MemoryDeliveryStore(DeliveryStore):
    """Embedded mode: one process, so its memory is the deployment."""

    kind = "memory"

    def __init__(self) -> None:
        self._minutes: dict[int, _MemoryMinute] = {}
        self._reports: dict[str, float] = {}

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def add(
        self, process: str, now: float, rows: dict[int, Row], new_minute: int | None
    ) -> None:
        for minute, row in rows.items():
            mine = self._minutes.setdefault(minute, _MemoryMinute()).row
            for i, n in enumerate(row):
                mine[i] += n
        if new_minute is not None:
            self._minutes.setdefault(new_minute, _MemoryMinute()).processes += 1
        self._reports[process] = now
        oldest = int(now // 60) - RETENTION_MINUTES
        for minute in [m for m in self._minutes if m < oldest]:
            del self._minutes[minute]

    async def read(self, now: float, minutes: int, window_seconds: float) -> Readout:
        last = int(now // 60)
        first = last - minutes + 1
        found = {
            m: stats_of(m, self._minutes[m].processes, self._minutes[m].row)
            for m in range(first, last + 1)
            if m in self._minutes
        }
        reporting = sum(1 for t in self._reports.values() if t >= now - window_seconds)
        return Readout(now, first, last, found, reporting)


class DeliveryStats:
    """This process's counter, its flusher, and reads shared by concurrent readers."""

    def __init__(
        self,
        counter: MinuteCounter,
        store: DeliveryStore,
        *,
        flush_seconds: float = 1.0,
        window_seconds: float = 60.0,
    ) -> None:
        self.counter = counter
        self.store = store
        self.process = secrets.token_hex(6)
        self.window_seconds = window_seconds
        self._flush_seconds = flush_seconds
        self._reported_minute = -1
        self._task: asyncio.Task[None] | None = None
        self._cached: Readout | None = None
        self._reading: asyncio.Task[Readout] | None = None
        self._failing = False

    @property
    def kind(self) -> str:
        return self.store.kind

    async def start(self) -> None:
        await self.store.start()
        await self.flush()  # this process counts as reporting from the start
        self._task = asyncio.create_task(self._run(), name="delivery-stats-flush")
        self._task.add_done_callback(loud("delivery_stats.task_died"))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()  # what the last second delivered
        finally:
            await self.store.close()

    async def flush(self) -> None:
        now = time.time()
        minute = int(now // 60)
        rows = self.counter.take()
        new_minute = minute if minute != self._reported_minute else None
        try:
            await self.store.add(self.process, now, rows, new_minute)
        except BaseException:
            self.counter.give_back(rows, minute - RETENTION_MINUTES)
            raise
        if new_minute is not None:
            self._reported_minute = minute

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            try:
                await self.flush()
            except Exception as exc:  # Redis unreachable: keep counting, retry next time
                self._warn(exc)
            else:
                if self._failing:
                    log.info("delivery_stats.flush_recovered")
                    self._failing = False

    def _warn(self, exc: BaseException) -> None:
        if not self._failing:  # once per outage, not once a second
            log.warning("delivery_stats.flush_failed", store=self.store.kind, error=repr(exc))
            self._failing = True

    async def read(self, fresh_within: float = 1.0) -> Readout:
        """The last :data:`READ_MINUTES` minutes, the current one included. One store
        read at a time, its answer shared for ``fresh_within`` seconds by every
        reader (each liveMetrics subscription asks once a second)."""
        cached = self._cached
        now = time.time()
        if cached is not None and 0 <= now - cached.at < fresh_within:
            return cached
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(
                self.store.read(now, READ_MINUTES, self.window_seconds)
            )
        readout = await asyncio.shield(self._reading)
        self._cached = readout
        return readout
