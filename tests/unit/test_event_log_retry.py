"""The event log's sender through a backend outage, with a scripted backend at the
``_check``/``_send`` seam (the Kafka one is tested against a real broker in
tests/integration/test_kafka_outage.py): failed sends are retried, never dropped;
the buffer bound counts unconfirmed events; a send is never repeated by close()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from streams.events import Event, EventLog, Unsent


class ScriptedBackend(EventLog):
    """Refuses to connect while ``down``; fails ``failures`` sends, each after
    "writing" them (like a broker that times out after writing), then works."""

    kind = "scripted"

    def __init__(self, *, buffer_size: int = 100, failures: int = 0) -> None:
        self.registry = CollectorRegistry()
        super().__init__(
            buffer_size=buffer_size,
            registry=self.registry,
            retry_backoff=0.005,
            retry_backoff_max=0.02,
        )
        self.down = False
        self.failures = failures
        self.written: list[str] = []  # every copy the backend received
        self.confirmed: list[str] = []
        self.hold: asyncio.Event | None = None  # set: a send waits for it before confirming

    async def _check(self, *, failing: bool) -> str | None:
        return "unreachable" if self.down else None

    async def _send(self, batch: list[Event]) -> Unsent | None:
        self.written += [e.type for e in batch]
        if self.hold is not None:
            await self.hold.wait()
        if self.failures:
            self.failures -= 1
            return Unsent(batch, maybe_written=len(batch), error="RequestTimedOutError")
        self.confirmed += [e.type for e in batch]
        return None

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def events(n: int) -> list[Event]:
    return [Event(type=f"activity.e{i}", institution_id="northwood") for i in range(n)]


async def wait_for(check: Callable[[], bool]) -> None:
    for _ in range(1000):  # 5 s
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in 5 s")


async def test_failed_sends_are_retried_not_dropped() -> None:
    log = ScriptedBackend(failures=3)
    await log.start()
    for event in events(5):
        log.emit(event)
    await wait_for(lambda: len(log.confirmed) == 5)
    await log.close()
    assert log.confirmed == [f"activity.e{i}" for i in range(5)]
    assert log.dropped_total == 0
    # Each failed send "wrote" its events: the counter bounds the duplicates.
    duplicates = len(log.written) - len(set(log.written))
    assert duplicates == log.metric("edumatrix_events_resent_total", reason="unconfirmed") > 0
    assert log.health() == "ok"


async def test_buffer_bound_counts_unconfirmed_events() -> None:
    log = ScriptedBackend(buffer_size=5)
    log.hold = asyncio.Event()  # the first send hangs: its events are unconfirmed
    await log.start()
    accepted = [log.emit(e) for e in events(3)]
    await wait_for(lambda: len(log.written) == 3)  # taken off the queue, in flight
    accepted += [log.emit(e) for e in events(5)]
    assert accepted.count(True) == 5 and log.dropped_total == 3
    log.hold.set()
    await wait_for(lambda: len(log.confirmed) == 5)
    await log.close()
    assert log.dropped_total == 3 and log.emitted_total == 5
    assert log.metric("edumatrix_events_dropped_total") == 3


async def test_unreachable_backend_buffers_and_reports_degraded() -> None:
    log = ScriptedBackend()
    log.down = True
    await log.start()
    for event in events(4):
        log.emit(event)
    await wait_for(lambda: log.problem is not None)
    assert log.health() == "degraded: unreachable; 4 events buffered"
    assert log.metric("edumatrix_events_degraded") == 1
    assert log.metric("edumatrix_events_buffered") == 4
    log.down = False
    await wait_for(lambda: len(log.confirmed) == 4)
    assert log.health() == "ok" and log.metric("edumatrix_events_degraded") == 0
    await log.close()
    assert log.dropped_total == 0


async def test_close_counts_what_it_could_not_send() -> None:
    log = ScriptedBackend()
    log.down = True
    await log.start()
    for event in events(3):
        log.emit(event)
    await asyncio.sleep(0.05)
    log.failures = 10  # the final flush fails too
    await log.close(flush_seconds=0.5)
    assert log.confirmed == [] and log.dropped_total == 3


async def test_close_waits_for_a_send_in_progress_instead_of_repeating_it() -> None:
    log = ScriptedBackend()
    log.hold = asyncio.Event()
    await log.start()
    log.emit(events(1)[0])
    await wait_for(lambda: len(log.written) == 1)  # written, not yet confirmed
    closing = asyncio.create_task(log.close(flush_seconds=5.0))
    await asyncio.sleep(0.05)
    log.hold.set()
    await closing
    assert log.written == ["activity.e0"] and log.confirmed == ["activity.e0"]
