"""The event schema and the event log interface every emitter uses.

One JSON object per event, the same on every topic and from every producer::

    {"id": "9b1f...", "type": "activity.page_view", "institutionId": "northwood",
     "userId": "nw-cy", "occurredAt": "2026-11-27T12:00:00.123Z",
     "data": {"page": "/grades"}, "departmentId": "nw-math", "classroomId": null}

Unknown extra fields are ignored (producers may be newer than consumers); a
missing or malformed required field makes the event invalid, and consumers send
invalid events to the dead-letter topic instead of crashing.

The log's promise (:class:`EventLog`): ``emit`` never blocks and never raises.
Events wait in a bounded buffer for a background sender; when the buffer is full
the event is dropped and counted, because analytics must never slow down or fail
the request that produced it. ``close`` flushes what is buffered.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

log = structlog.get_logger(__name__)

ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
EVENT_TYPE = r"^[a-z][A-Za-z0-9_.-]{0,63}$"
MAX_EVENT_BYTES = 16_384
# json.dumps with non-default arguments builds an encoder per call; every event
# built in the server (several per connection) goes through this check.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
MAX_DATA_BYTES = 8_192


class EventError(ValueError):
    """The bytes are not a valid event; ``str(exc)`` is the dead-letter reason."""


class Event(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )

    # 128 random bits as 32 hex digits, like uuid4().hex, without building a UUID
    # object (a third of the cost of an event, and the server builds two per publish).
    id: str = Field(default_factory=lambda: secrets.token_hex(16), pattern=ID)
    type: str = Field(pattern=EVENT_TYPE)
    institution_id: str = Field(pattern=ID)
    user_id: str | None = Field(default=None, pattern=ID)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, Any] = Field(default_factory=dict)
    department_id: str | None = Field(default=None, pattern=ID)
    classroom_id: str | None = Field(default=None, pattern=ID)

    @field_validator("occurred_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        """Buckets are UTC minutes; a naive time would silently land in the wrong one."""
        if value.tzinfo is None:
            raise ValueError("occurredAt needs a timezone (use Z or +00:00)")
        return value.astimezone(UTC)

    @field_validator("data")
    @classmethod
    def _small_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(_COMPACT.encode(value)) > MAX_DATA_BYTES:
            raise ValueError(f"data is larger than {MAX_DATA_BYTES} bytes as JSON")
        return value

    @property
    def is_error(self) -> bool:
        """Error events feed the errors/min metric and its alert rule."""
        return self.type == "error" or self.type.startswith("error.")

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


def decode_event(raw: bytes | None) -> Event:
    """Parse and validate one event, or raise :class:`EventError` with the reason."""
    if raw is None:
        raise EventError("empty message (null value)")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"event larger than {MAX_EVENT_BYTES} bytes")
    try:
        return Event.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise EventError(f"{where}: {first['msg']}") from exc


class Topics(BaseModel):
    """Topic names, from settings; ``for_type`` routes an event type to its family."""

    user_actions: str = "user-actions"
    institution_events: str = "institution-events"
    analytics: str = "analytics"
    dead_letter: str = "events-dead-letter"

    def for_type(self, event_type: str) -> str:
        family = event_type.split(".", 1)[0]
        if family in ("auth", "activity", "permission", "subscription"):
            return self.user_actions
        if family in ("mutation", "institution", "registration"):
            return self.institution_events
        return self.analytics  # error.*, metric.*, performance and anything new

    @property
    def sources(self) -> list[str]:
        return [self.user_actions, self.institution_events, self.analytics]


class EventLog(ABC):
    """A bounded, non-blocking buffer in front of a sender (Kafka or in-process).

    Guarantees: ``emit`` returns at once; an accepted event is sent at least once
    unless the process dies first; per institution, events are sent in emit order.
    """

    kind: str = "abstract"
    # How long the sender waits after the first event of a batch for more to join
    # it. Zero suits a sender that batches by itself (Kafka's linger_ms).
    linger_seconds: float = 0.0

    def __init__(self, *, buffer_size: int, registry: CollectorRegistry | None = None) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(buffer_size)
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[Event] = []  # taken off the queue, not yet sent
        self.emitted_total = 0  # plain mirrors of the counters, for systemStatus
        self.dropped_total = 0
        self.emitted = Counter(
            "edumatrix_events_emitted_total", "Events accepted by the event log", registry=registry
        )
        self.dropped = Counter(
            "edumatrix_events_dropped_total",
            "Events dropped because the event log buffer was full",
            registry=registry,
        )

    def emit(self, event: Event) -> bool:
        """Buffer ``event``; False (and counted) if the buffer is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped.inc()
            self.dropped_total += 1
            return False
        self.emitted.inc()
        self.emitted_total += 1
        return True

    async def start(self) -> None:
        await self._open()
        self._task = asyncio.create_task(self._sender(), name=f"event-log-{self.kind}")

    async def close(self) -> None:
        """Send what is buffered, then release the sender."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        pending, self._inflight = self._inflight + self._drain(), []
        if pending:
            try:
                await self._send(pending)
            except Exception as exc:  # shutdown: report, do not mask the original stop
                log.error("events.flush_failed", count=len(pending), error=repr(exc))
        await self._shut()

    def _drain(self) -> list[Event]:
        batch: list[Event] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _sender(self) -> None:
        while True:
            # Held on the instance, not in a local: if close() cancels this task
            # while the batch lingers or is being sent, close() sends it, first and
            # in order, instead of losing what was already taken off the queue.
            self._inflight = [await self._queue.get()]
            if self.linger_seconds:
                await asyncio.sleep(self.linger_seconds)
            self._inflight += self._drain()
            try:
                await self._send(self._inflight)
            except Exception as exc:
                # The sender must outlive broker hiccups; lost batches are counted.
                self.dropped.inc(len(self._inflight))
                self.dropped_total += len(self._inflight)
                log.error("events.send_failed", count=len(self._inflight), error=repr(exc))
                self._inflight = []
                await asyncio.sleep(1.0)
            self._inflight = []

    async def _open(self) -> None:
        """Connect to whatever the events go to (nothing by default)."""
        return None

    async def _shut(self) -> None:
        """Release the connection after the final flush (nothing by default)."""
        return None

    @abstractmethod
    async def _send(self, batch: list[Event]) -> None:
        """Send ``batch`` in order; raise if it could not be sent."""
