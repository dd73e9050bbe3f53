"""The outbox relay: every committed message reaches the bus, exactly once per offset.

A mutation commits its row and its outbox rows together (``db/outbox.py``), then
hands the queued messages to :meth:`OutboxRelay.deliver`, which publishes them at
once (the live path, as fast as before) and deletes their rows in batches. If a
publish fails (Redis down, a connection lost), the mutation still succeeds: the
message is accepted and will be delivered. Rows left behind — by a failed publish,
a crash between commit and publish, or a crash before their delete — are swept by
every server process's relay: rows older than ``grace`` are published (with their
publish key, so one that did reach the bus gets the offset it already had) and
deleted in one transaction; on Postgres concurrent relays skip each other's rows.

Guarantee: a committed message is published at least once and, while its first
publish is still in history, at most once (``ChannelLog.publish`` keys). Order is
per-publish: a relayed message gets the next offset when it is relayed, after
messages published meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, timedelta

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from db import outbox
from db.models import utcnow
from db.outbox import Queued
from streams.bus import Bus
from streams.redis_client import REDIS_DOWN

log = structlog.get_logger(__name__)

# What a failed publish raises: Redis errors (a cluster's too), sockets, a pool that
# had no connection.
_BUS_DOWN: tuple[type[BaseException], ...] = (*REDIS_DOWN, ConnectionError, TimeoutError)


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.published = Counter(
            "edumatrix_outbox_published",
            "Outbox messages put on the bus, by who (live: the request after its commit; "
            "relay: swept after a failed publish or a crash)",
            ["by"],
            registry=registry,
        )
        self.deferred = Counter(
            "edumatrix_outbox_deferred",
            "Committed messages whose live publish failed; the relay delivers them",
            registry=registry,
        )
        self.backlog = Gauge(
            "edumatrix_outbox_backlog",
            "Outbox rows not yet deleted (published or not), at the last sweep",
            registry=registry,
        )
        self.age = Gauge(
            "edumatrix_outbox_oldest_age_seconds",
            "Age of the oldest outbox row at the last sweep (0 when empty)",
            registry=registry,
        )
        for by in ("live", "relay"):
            self.published.labels(by=by)


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        bus: Bus,
        registry: CollectorRegistry | None = None,
        *,
        interval: float = 1.0,
        grace: float = 2.0,
        batch: int = 500,
    ) -> None:
        """``grace``: how old a row must be before the relay takes it, so rows whose
        request is still publishing them are left to it (taking them too would only
        cost a keyed republish)."""
        self._engine = engine
        self._bus = bus
        self.metrics = OutboxMetrics(registry)
        self._interval = interval
        self._grace = timedelta(seconds=grace)
        self._batch = batch
        self._published: list[int] = []  # live-published, rows to delete
        self._live = self.metrics.published.labels(by="live")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def close(self) -> None:
        """Stop sweeping and delete the rows already published (the rest wait for
        the next process to start, or another process's relay)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._forget_published()

    async def deliver(self, items: Sequence[Queued]) -> bool:
        """Publish committed messages now; True if all are on the bus. Never raises
        for the bus: what did not go out is the relay's."""
        delivered = True
        for item in items:
            try:
                await self._bus.publish(item.channel, item.kind, item.data, key=item.key)
            except _BUS_DOWN as exc:
                log.warning(
                    "outbox.publish_deferred", channel=item.channel, kind=item.kind, error=repr(exc)
                )
                self.metrics.deferred.inc()
                delivered = False
                continue
            self._live.inc()
            self._published.append(item.id)
        if not delivered or len(self._published) >= self._batch:
            self._wake.set()
        return delivered

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._forget_published()
                await self.sweep()
            except Exception as exc:  # the database or Redis is down: next round
                log.warning("outbox.sweep_failed", error=repr(exc))

    async def _forget_published(self) -> None:
        ids, self._published = self._published, []
        if not ids:
            return
        try:
            async with self._engine.begin() as conn:
                await outbox.remove(conn, ids)
        except Exception:
            self._published.extend(ids)  # the rows stay; a sweep would republish by key
            raise

    async def sweep(self) -> int:
        """Relay the rows left behind; how many went out."""
        relayed = 0
        while True:
            async with self._engine.begin() as conn:
                rows = await outbox.due(conn, self._grace, self._batch)
                sent = []
                for row in rows:
                    try:
                        await self._bus.publish(row.channel, row.kind, row.data, key=row.key)
                    except _BUS_DOWN as exc:
                        log.warning("outbox.relay_failed", channel=row.channel, error=repr(exc))
                        break
                    sent.append(row.id)
                await outbox.remove(conn, sent)
            relayed += len(sent)
            self.metrics.published.labels(by="relay").inc(len(sent))
            if sent:
                log.info("outbox.relayed", messages=len(sent))
            if len(sent) < self._batch:
                break
        async with self._engine.connect() as conn:
            count, oldest = await outbox.backlog(conn)
        self.metrics.backlog.set(count)
        if oldest is not None and oldest.tzinfo is None:  # SQLite keeps no offset
            oldest = oldest.replace(tzinfo=UTC)
        self.metrics.age.set((utcnow() - oldest).total_seconds() if oldest else 0.0)
        return relayed
