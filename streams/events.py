"""The event schema and the event log interface every emitter uses.

One JSON object per event, the same on every topic and from every producer::

    {"id": "9b1f...", "type": "activity.page_view", "institutionId": "northwood",
     "userId": "nw-cy", "occurredAt": "2026-11-27T12:00:00.123Z",
     "data": {"page": "/grades"}, "departmentId": "nw-math", "classroomId": null}

Unknown extra fields are ignored (producers may be newer than consumers); a
missing or malformed required field makes the event invalid, and consumers send
invalid events to the dead-letter topic instead of crashing. :func:`decode_event`
raises nothing but :class:`EventError`, whatever the bytes: a record a consumer
cannot read must never stop it.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from streams.backoff import Backoff

log = structlog.get_logger(__name__)

ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
EVENT_TYPE = r"^[a-z][A-Za-z0-9_.-]{0,63}$"
MAX_EVENT_BYTES = 16_384
# json.dumps with non-default arguments builds an encoder per call; every event
# built in the server (several per connection) goes through this check.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
MAX_DATA_BYTES = 8_192


# Why a record was dead-lettered: a small fixed set, the label of
# edumatrix_events_invalid_total. aggregate_failed: valid, but its write failed alone.
Reason = Literal["too_large", "not_json", "invalid", "overflow", "aggregate_failed"]
REASONS: tuple[Reason, ...] = ("too_large", "not_json", "invalid", "overflow", "aggregate_failed")
MAX_REASON_CHARS = 500


class EventError(ValueError):
    """The bytes are not a valid event; ``str(exc)`` is the dead-letter reason and
    ``code`` its class (one of :data:`REASONS`)."""

    def __init__(self, message: str, code: Reason = "invalid") -> None:
        super().__init__(message[:MAX_REASON_CHARS])
        self.code: Reason = code


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
        try:
            return value.astimezone(UTC)
        except OverflowError:
            # 9999-12-31T23:59:59-05:00 is a valid datetime whose UTC time is not;
            # an OverflowError is no ValidationError and used to escape decode_event.
            raise PydanticCustomError("overflow", "outside years 1-9999 once in UTC") from None

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
    """Parse and validate one event, or raise :class:`EventError` with the reason.

    Nothing else escapes: a validator's unexpected exception is an invalid event
    too, since the alternative is a consumer that dies on the same record forever.
    """
    if raw is None:
        raise EventError("empty message (null value)", "not_json")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"event larger than {MAX_EVENT_BYTES} bytes", "too_large")
    try:
        return Event.model_validate_json(raw)
    except ValidationError as exc:
        # Neither the input nor its context: the reason must stay small and say
        # what is wrong, not repeat the bad bytes.
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        code: Reason = "invalid"
        if first["type"] == "json_invalid":
            code = "not_json"
        elif first["type"] == "overflow":
            code = "overflow"
        raise EventError(f"{where}: {first['msg']}", code) from exc
    except OverflowError as exc:
        raise EventError(f"event: value out of range ({exc})", "overflow") from exc
    except Exception as exc:
        raise EventError(f"event: {type(exc).__name__}: {exc}", "invalid") from exc


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


@dataclass(frozen=True, slots=True)
class Unsent:
    """What one send could not confirm; the sender sends ``events`` again, in order.

    ``maybe_written`` of them failed in a way that may still have written them (a
    hung broker processes a timed-out request when it resumes), so sending them
    again may put a second copy on the topic. ``error`` names the first failure.
    """

    events: list[Event]
    maybe_written: int = 0
    error: str = ""


class EventLog(ABC):
    """A bounded, non-blocking buffer in front of a sender (Kafka or in-process).

    Guarantees: ``emit`` returns at once. An accepted event is sent at least once
    unless the process dies first, however long the sender's backend is away: a
    send that fails is retried with capped, jittered backoff, never dropped. The
    buffer (``buffer_size``) holds every accepted event not yet confirmed; an event
    that finds it full is refused and counted as dropped. The only other counted
    losses: an event the backend rejects for good, and events still unconfirmed
    when ``close`` gives up. Per institution, events are sent in emit order, except
    that an event sent again after a failure may land after later ones.
    """

    kind: str = "abstract"
    # How long the sender waits after the first event of a batch for more to join
    # it. Zero suits a sender that batches by itself (Kafka's linger_ms).
    linger_seconds: float = 0.0

    def __init__(
        self,
        *,
        buffer_size: int,
        registry: CollectorRegistry | None = None,
        retry_backoff: float = 0.2,
        retry_backoff_max: float = 5.0,
    ) -> None:
        self._capacity = buffer_size
        # Unbounded itself: emit() bounds the queue and the unconfirmed batch together.
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[Event] = []  # taken off the queue, not yet confirmed
        self._sending = False  # inside _send: close() waits for it instead of cancelling
        self._closing = False
        self._failing = False  # the last send failed: _check() may probe before the next
        self._backoff = Backoff(retry_backoff, retry_backoff_max)
        self.problem: str | None = None  # why events are not getting through (/readyz)
        self.emitted_total = 0  # plain mirrors of the counters, for systemStatus
        self.dropped_total = 0
        self.emitted = Counter(
            "edumatrix_events_emitted_total", "Events accepted by the event log", registry=registry
        )
        self.dropped = Counter(
            "edumatrix_events_dropped_total",
            "Events lost: refused with the buffer full, rejected for good by the backend, "
            "or still unconfirmed when shutdown gave up",
            registry=registry,
        )
        self.resent = Counter(
            "edumatrix_events_resent_total",
            "Events sent again after a failed send; reason=unconfirmed: the first copy may "
            "have been written too (an upper bound on duplicates on the topics)",
            ["reason"],
            registry=registry,
        )
        for reason in ("unconfirmed", "not_sent"):
            self.resent.labels(reason)  # exported as 0 from the start
        Gauge(
            "edumatrix_events_buffered",
            "Accepted events not yet confirmed by the backend",
            registry=registry,
        ).set_function(lambda: self.buffered)
        Gauge(
            "edumatrix_events_degraded",
            "1 while the event log cannot deliver (the reason is in /readyz)",
            registry=registry,
        ).set_function(lambda: float(self.problem is not None))

    @property
    def buffered(self) -> int:
        return self._queue.qsize() + len(self._inflight)

    def health(self) -> str:
        """``ok``, or ``degraded: <why>; <n> events buffered``, for ``/readyz``."""
        if self.problem is None:
            return "ok"
        return f"degraded: {self.problem}; {self.buffered} events buffered"

    def emit(self, event: Event) -> bool:
        """Buffer ``event``; False (and counted) if the buffer is full."""
        if self._queue.qsize() + len(self._inflight) >= self._capacity:
            self._count_dropped(1)
            return False
        self._queue.put_nowait(event)
        self.emitted.inc()
        self.emitted_total += 1
        return True

    def _count_dropped(self, count: int) -> None:
        self.dropped.inc(count)
        self.dropped_total += count

    async def start(self) -> None:
        """Start the sender; connecting is its job, so a backend that is away does
        not stop the server from starting (events wait in the buffer)."""
        await self._open()
        self._task = asyncio.create_task(self._sender(), name=f"event-log-{self.kind}")

    async def close(self, *, flush_seconds: float = 7.0) -> None:
        """Send what is buffered within about ``flush_seconds``, then release the sender.

        A send in progress is awaited, not cancelled: cancelling it would forget
        which of its events got through and send them all again. What is still
        unconfirmed at the end is logged and counted as dropped.
        """
        self._closing = True
        loop = asyncio.get_running_loop()
        ends = loop.time() + flush_seconds
        if self._task is not None:
            if not self._sending:
                self._task.cancel()  # idle, lingering, backing off or connecting
            await asyncio.wait({self._task}, timeout=flush_seconds)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        pending, self._inflight = self._inflight + self._drain(), []
        if pending:
            lost, why = pending, "flush timed out"
            try:
                async with asyncio.timeout(max(1.0, ends - loop.time())):
                    unsent = await self._send(pending)
                lost, why = (unsent.events, unsent.error) if unsent else ([], "")
            except Exception as exc:  # shutdown: report, do not mask the original stop
                why = repr(exc)
            if lost:
                self._count_dropped(len(lost))
                log.error("events.flush_failed", kind=self.kind, count=len(lost), error=why)
        await self._shut()

    def _drain(self) -> list[Event]:
        batch: list[Event] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _sender(self) -> None:
        while not self._closing:
            await self._until_ready()
            if not self._inflight:
                # Held on the instance, not in a local: if close() cancels this task
                # while the batch lingers, close() sends it, first and in order,
                # instead of losing what was already taken off the queue.
                self._inflight = [await self._queue.get()]
                if self.linger_seconds:
                    await asyncio.sleep(self.linger_seconds)
            self._inflight += self._drain()
            self._sending = True
            failed: Exception | None = None
            try:
                unsent = await self._send(self._inflight)
            except Exception as exc:
                unsent, failed = None, exc
            finally:
                self._sending = False
            if failed is not None:
                # A bug, or a backend that refuses the batch for good (the in-process
                # aggregator retries transient database errors itself): counted.
                self._count_dropped(len(self._inflight))
                log.error("events.send_failed", count=len(self._inflight), error=repr(failed))
                self._inflight = []
                await asyncio.sleep(self._backoff.next())
                continue
            if unsent is None or not unsent.events:
                self._inflight = []
                self._failing = False
                self.problem = None
                self._backoff.reset()
                continue
            self._inflight = unsent.events
            self._failing = True
            self.problem = f"sends failing: {unsent.error}"
            self.resent.labels("unconfirmed").inc(unsent.maybe_written)
            self.resent.labels("not_sent").inc(len(unsent.events) - unsent.maybe_written)
            if self._closing:
                return  # close() sends them once more
            delay = self._backoff.next()
            if self._backoff.worth_logging:
                log.warning(
                    "events.send_retry",
                    kind=self.kind,
                    count=len(unsent.events),
                    maybe_written=unsent.maybe_written,
                    error=unsent.error,
                    attempt=self._backoff.attempt,
                    retry_in=round(delay, 3),
                )
            await asyncio.sleep(delay)

    async def _until_ready(self) -> None:
        """Wait, backing off, until :meth:`_check` finds the backend usable."""
        while (problem := await self._check(failing=self._failing)) is not None:
            self.problem = problem
            delay = self._backoff.next()
            if self._backoff.worth_logging:
                log.warning(
                    "events.backend_unavailable",
                    kind=self.kind,
                    problem=problem,
                    attempt=self._backoff.attempt,
                    retry_in=round(delay, 3),
                    buffered=self.buffered,
                )
            await asyncio.sleep(delay)
        if self.problem is not None and not self._failing:
            log.info("events.backend_available", kind=self.kind, buffered=self.buffered)
            self.problem = None
            self._backoff.reset()

    async def _check(self, *, failing: bool) -> str | None:
        """None if events can be sent now, else why not (the sender waits and asks
        again). ``failing``: the last send failed. Connecting belongs here."""
        return None

    async def _open(self) -> None:
        """Prepare before the sender starts; must not wait for a remote backend."""
        return None

    async def _shut(self) -> None:
        """Release the connection after the final flush (nothing by default)."""
        return None

    @abstractmethod
    async def _send(self, batch: list[Event]) -> Unsent | None:
        """Send ``batch`` in order. Return the events to send again (None: all
        confirmed); raise only if the whole batch is lost for good."""
