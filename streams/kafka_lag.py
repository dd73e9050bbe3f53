"""Consumer lag as the broker and the database see it, read without joining the group.

    lag(partition) = broker end offset now - max(next offset stored with the
                     aggregates in Postgres, the partition's log start)

Both sides are read at the same moment by whoever asks (``systemStatus``, the
server's and each consumer's ``edumatrix_consumer_lag`` gauge), so a stopped
pipeline shows its backlog: before, lag was the high watermark each consumer
saved at its last batch, which read 0 with no consumer running and 5,000 events
waiting, and the consumer's gauge existed only for partitions it had fetched.

Why end offsets come from a fetch response, not ``ListOffsets``: tansu 0.6
answers ``ListOffsets(latest)`` with the base offset of the newest record batch
+ 1, short by the batch's other records (15 records in three batches of five read
11). A fetch response's high watermark is right. :class:`BrokerEnds` keeps one
consumer without a group, every partition assigned and paused; a read takes
``ListOffsets`` as a hint, seeks each partition one record before it (the start of
the newest batch at worst), resumes, waits for one fetch response per partition
(``last_poll_timestamp``) and pauses again: at most a batch per partition per
read, whatever the backlog. Against Apache Kafka the hint is already right and
the fetch returns one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry, Counter, Gauge

from db.analytics_read import group_offsets, utc
from db.engine import Sessions
from streams.kafka_log import ensure_topics

log = structlog.get_logger(__name__)

Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    end_offset: int  # the broker's, at read time
    next_offset: int  # the next offset to apply, as stored with the aggregates
    lag: int
    latency_ms: float | None  # of the last batch applied
    updated_at: datetime | None  # when a batch last advanced it; None: never


@dataclass(frozen=True, slots=True)
class LagSnapshot:
    """The group's lag at ``read_at``; ``error`` says why it could not be read
    (then ``partitions`` is empty and the lag is unknown, not zero)."""

    group: str
    read_at: datetime
    partitions: tuple[PartitionLag, ...] = ()
    error: str | None = None

    @property
    def total(self) -> int | None:
        return None if self.error else sum(p.lag for p in self.partitions)


def compute(
    group: str,
    ends: dict[Key, tuple[int, int]],
    stored: dict[Key, tuple[int, float | None, datetime | None]],
    read_at: datetime,
) -> LagSnapshot:
    """Join the broker's (log start, end) with the stored (next offset, latency,
    updated_at) per partition; a partition nothing was applied from starts at its
    log start, where the consumer's ``auto_offset_reset="earliest"`` starts."""
    rows = []
    for (topic, part), (start, end) in sorted(ends.items()):
        next_offset, latency, updated = stored.get((topic, part), (start, None, None))
        position = max(next_offset, start)
        rows.append(
            PartitionLag(topic, part, end, next_offset, max(0, end - position), latency, updated)
        )
    return LagSnapshot(group, read_at, tuple(rows))


class BrokerEnds:
    """(log start, end offset) of every partition of ``topics``, from the broker,
    without joining any group. Reconnects on the next read after a failure."""

    def __init__(
        self, bootstrap: str, topics: list[str], *, partitions: int, timeout: float = 5.0
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions  # for topics that do not exist yet
        self.timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._assigned: frozenset[TopicPartition] = frozenset()

    async def read(self) -> dict[Key, tuple[int, int]]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._read()
        except BaseException:
            await self.close()
            raise

    async def _read(self) -> dict[Key, tuple[int, int]]:
        consumer, admin = await self._connect()
        wanted = frozenset(
            TopicPartition(t["topic"], p["partition"])
            for t in await admin.describe_topics(self.topics)
            for p in t["partitions"]
        )
        if wanted != self._assigned:
            consumer.assign(list(wanted))
            consumer.pause(*wanted)
            self._assigned = wanted
        tps = sorted(wanted)
        if not tps:
            return {}
        hints = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        since_ms = int(1000 * time.time())
        for tp in tps:
            consumer.seek(tp, max(hints[tp] - 1, starts[tp], 0))
        consumer.resume(*tps)
        try:
            pending = set(tps)
            while pending:
                await consumer.getmany(*pending, timeout_ms=20)  # records are not wanted
                pending = {
                    tp for tp in pending if (consumer.last_poll_timestamp(tp) or 0) < since_ms
                }
        finally:
            consumer.pause(*tps)
        ends = {}
        for tp in tps:
            high = consumer.highwater(tp)
            if high is None:
                raise RuntimeError(f"no high watermark for {tp.topic}/{tp.partition}")
            ends[(tp.topic, tp.partition)] = (starts[tp], max(high, hints[tp]))
        return ends

    async def _connect(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is not None and self._admin is not None:
            return self._consumer, self._admin
        # Topics described before they exist would be auto-created by tansu with its
        # own partition count; create them as the server and consumers would.
        await ensure_topics(self.bootstrap, self.topics, self.partitions)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="edumatrix-lag")
        await admin.start()
        self._admin = admin
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            client_id="edumatrix-lag",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,  # an empty partition answers at once
            max_partition_fetch_bytes=64 * 1024,
            request_timeout_ms=int(self.timeout * 1000),
        )
        await consumer.start()
        self._consumer = consumer
        self._assigned = frozenset()
        return consumer, admin

    async def close(self) -> None:
        consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
        self._assigned = frozenset()
        for closing in (consumer.stop if consumer else None, admin.close if admin else None):
            if closing is not None:
                with contextlib.suppress(Exception):  # closing a broken connection
                    await closing()


class LagMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.lag = Gauge(
            "edumatrix_consumer_lag",
            "Broker end offset minus the next offset stored with the aggregates, per "
            "partition of the consumer group, read every EDUMATRIX_CONSUMER_LAG_INTERVAL"
            "_SECONDS; absent while the broker or the database cannot be read",
            ["topic", "partition"],
            registry=registry,
        )
        self.read_at = Gauge(
            "edumatrix_consumer_lag_read_timestamp_seconds",
            "When edumatrix_consumer_lag was last read successfully (Unix time)",
            registry=registry,
        )
        self.failures = Counter(
            "edumatrix_consumer_lag_read_failures_total",
            "Lag reads that failed (broker or database unreachable)",
            registry=registry,
        )


OnSnapshot = Callable[[LagSnapshot], Awaitable[None]]


class LagMonitor:
    """Reads the group's lag every ``interval`` seconds into the gauge (and hands
    each snapshot to ``on_snapshot``, the server's alert rules); :meth:`read`
    serves readers such as ``systemStatus``, one broker read at a time."""

    def __init__(
        self,
        ends: BrokerEnds,
        sessions: Sessions,
        group: str,
        *,
        interval: float,
        registry: CollectorRegistry | None,
        on_snapshot: OnSnapshot | None = None,
    ) -> None:
        self.ends = ends
        self.sessions = sessions
        self.group = group
        self.interval = interval
        self.metrics = LagMetrics(registry)
        self.on_snapshot = on_snapshot
        self.latest: LagSnapshot | None = None
        self._latest_at = 0.0  # monotonic
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._labels: set[tuple[str, str]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="consumer-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # Bounded: a hung broker must not hold up a consumer's SIGTERM exit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.ends.close()

    async def read(self, fresh_within: float = 1.0) -> LagSnapshot:
        """A snapshot at most ``fresh_within`` seconds old; concurrent callers share
        one broker read."""
        requested = time.monotonic()
        async with self._lock:
            if self.latest is not None and requested - self._latest_at <= fresh_within:
                return self.latest
            return await self._refresh()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                async with self._lock:
                    snapshot = await self._refresh()
                if self.on_snapshot is not None:
                    await self.on_snapshot(snapshot)
            except Exception as exc:  # the loop must outlive anything one round does
                log.error("lag.round_failed", error=repr(exc))
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _refresh(self) -> LagSnapshot:
        """Read both sides now; a failure gives a snapshot with ``error`` and removes
        the gauge's samples: an unknown lag must not look like a stale or zero one."""
        try:
            ends = await self.ends.read()
            rows = await group_offsets(self.sessions, self.group)
        except Exception as exc:
            snapshot = LagSnapshot(self.group, datetime.now(UTC), error=_describe(exc))
            self.metrics.failures.inc()
            self.metrics.lag.clear()
            self._labels.clear()
            if self.latest is None or self.latest.error is None:  # once per outage, not per read
                log.warning("lag.read_failed", group=self.group, error=snapshot.error)
        else:
            stored = {
                (r.topic, r.partition): (
                    r.next_offset,
                    r.latency_ms,
                    utc(r.updated_at) if r.updated_at else None,
                )
                for r in rows
            }
            snapshot = compute(self.group, ends, stored, datetime.now(UTC))
            self._export(snapshot)
            if self.latest is not None and self.latest.error is not None:
                log.info("lag.read_recovered", group=self.group)
        self.latest, self._latest_at = snapshot, time.monotonic()
        return snapshot

    def _export(self, snapshot: LagSnapshot) -> None:
        labels = set()
        for p in snapshot.partitions:
            key = (p.topic, str(p.partition))
            labels.add(key)
            self.metrics.lag.labels(*key).set(p.lag)
        for gone in self._labels - labels:
            self.metrics.lag.remove(*gone)
        self._labels = labels
        self.metrics.read_at.set(snapshot.read_at.timestamp())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out reading the broker or the database"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
