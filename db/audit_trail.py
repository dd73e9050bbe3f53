"""Audit writes that are more than one ``INSERT`` in the caller's request.

Two cases:

* **Floods.** A failed authentication costs the attacker one request and us one
  row, so without a bound the audit log is a way to fill the disk.
  :meth:`AuditTrail.record_or_count` writes the first ``per_minute`` rows of one
  (client IP, action, target) in a minute as usual and only counts the rest; when
  the minute ends, one row with ``outcome="limited"`` and ``detail.count`` stands
  for them. Rows per minute are therefore bounded by
  ``(max_sources + 1) * (per_minute + 1)`` per (action, target), however many
  requests arrive.

  The counts are an in-process dict of the current minute, bounded by
  ``max_sources`` IPs (beyond that every new IP shares one "other sources" count
  whose row has no IP). That is enough here because it only bounds log volume:
  each process bounds its own rows, and nothing is refused because of it; the
  request limits themselves (shared between processes) are ``api/admission.py``'s.

* **Rows nobody should wait for**: a WebSocket's open row (a reconnect herd
  must not queue its acknowledgements behind a thousand single-row
  transactions), its close row (written while the handler is torn down, maybe
  cancelled), ``trackActivity`` (fire-and-forget by design, like the event it
  emits) and the count rows above. :meth:`AuditTrail.record_later` queues them
  and one writer task stores whatever is queued in one transaction per batch,
  so a herd costs a few transactions, not one per connection.
  :meth:`AuditTrail.close` (from the lifespan, before the engine is disposed)
  writes the counts still open and waits for the queue to drain. The queue is
  bounded (``max_queued``): past it rows are dropped and each drop is logged
  (``audit.dropped``) rather than growing memory while the database is down.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from db import repo
from db.engine import Sessions
from db.repo import Actor, AuditOutcome

log = structlog.get_logger(__name__)

_Key = tuple[str | None, str, str | None]  # client IP (None: other sources), action, target


@dataclass(slots=True)
class _Source:
    seen: int = 0  # this minute, written or not


class AuditTrail:
    def __init__(
        self,
        sessions: Sessions,
        *,
        per_minute: int = 5,
        max_sources: int = 1000,
        window_seconds: float = 60.0,
        max_queued: int = 100_000,
        max_batch: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._per_minute = per_minute
        self._max_sources = max_sources
        self._window_s = window_seconds
        self._clock = clock
        self._window = int(clock() // window_seconds)
        self._sources: dict[_Key, _Source] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._writer: asyncio.Task[None] | None = None
        self.dropped = 0

    async def record(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        outcome: AuditOutcome,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One row now, in its own transaction (:func:`db.repo.audit`)."""
        await repo.audit(self._sessions, actor, action, target, outcome, detail)

    async def record_or_count(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        outcome: AuditOutcome,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Write the row unless ``actor.ip`` already had ``per_minute`` of
        (``action``, ``target``) this minute; then count it for the minute's
        ``limited`` row. True if the row was written."""
        self._roll()
        key: _Key = (actor.ip, action, target)
        source = self._sources.get(key)
        if source is None:
            if len(self._sources) >= self._max_sources:
                key = (None, action, target)
                source = self._sources.get(key)
            if source is None:
                source = self._sources[key] = _Source()
        source.seen += 1
        if source.seen <= self._per_minute:
            await self.record(actor, action, target, outcome, detail)
            return True
        self._flush_at_window_end()
        return False

    def record_later(
        self,
        actor: Actor,
        action: str,
        target: str | None,
        outcome: AuditOutcome,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Queue the row for the writer task (stamped now); :meth:`close` waits for it."""
        self._enqueue([repo.audit_values(actor, action, target, outcome, detail)])

    async def close(self) -> None:
        """Write the open minute's counts and wait until the queue is stored."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _roll(self) -> None:
        window = int(self._clock() // self._window_s)
        if window != self._window:
            self._flush()
            self._window = window

    def _flush_at_window_end(self) -> None:
        if self._timer is not None:
            return
        end = (self._window + 1) * self._window_s
        delay = max(end - self._clock(), 0.0) + 0.05
        self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._roll()

    def _flush(self) -> None:
        """One ``limited`` row per source that went over, for the window that ends."""
        sources, self._sources = self._sources, {}
        start = datetime.fromtimestamp(self._window * self._window_s, UTC)
        rows = [
            repo.audit_values(
                Actor(ip=ip),
                action,
                target,
                "limited",
                {
                    "count": source.seen - self._per_minute,
                    "written": self._per_minute,
                    "windowStart": start.isoformat(),
                    "windowSeconds": self._window_s,
                    **({} if ip is not None else {"otherSources": True}),
                },
            )
            for (ip, action, target), source in sources.items()
            if source.seen > self._per_minute
        ]
        if rows:
            self._enqueue(rows)

    def _enqueue(self, rows: list[dict[str, Any]]) -> None:
        room = self._max_queued - len(self._queue)
        if room < len(rows):
            self.dropped += len(rows) - max(room, 0)
            log.error("audit.dropped", rows=len(rows) - max(room, 0), queued=len(self._queue))
            rows = rows[: max(room, 0)]
        self._queue.extend(rows)
        if self._queue and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name="audit-writer"
            )

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # let rows queued in this loop turn join the batch
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            if not await self._store(batch) and len(batch) > 1:
                for row in batch:  # one bad row must not lose the others
                    await self._store([row])

    async def _store(self, rows: list[dict[str, Any]]) -> bool:
        try:
            await repo.append(self._sessions, rows)
        except Exception as exc:  # nobody awaits these rows: say what was lost
            actions = sorted({row["action"] for row in rows})
            log.error("audit.write_failed", rows=len(rows), actions=actions, error=repr(exc))
            return False
        return True
