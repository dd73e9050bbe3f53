"""The event log's sender loses nothing taken off its queue when it is stopped:
not while a batch lingers, not while a batch is being sent."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from streams.events import Event, EventLog


class RecordingLog(EventLog):
    kind = "recording"

    def __init__(self, linger: float, hold: asyncio.Event | None = None) -> None:
        super().__init__(buffer_size=100, registry=CollectorRegistry())
        self.linger_seconds = linger
        self.hold = hold  # while unset, the first send blocks (a slow broker)
        self.sent: list[str] = []

    async def _send(self, batch: list[Event]) -> None:
        if self.hold is not None and not self.sent:
            await self.hold.wait()
        self.sent += [e.type for e in batch]


def events(n: int) -> list[Event]:
    return [Event(type=f"activity.e{i}", institution_id="northwood") for i in range(n)]


async def test_close_while_a_batch_lingers_sends_it_in_order() -> None:
    log = RecordingLog(linger=30.0)
    await log.start()
    for event in events(3):
        log.emit(event)
    await asyncio.sleep(0.05)  # the sender took the first event and lingers
    await log.close()
    assert log.sent == ["activity.e0", "activity.e1", "activity.e2"]


async def test_close_while_sending_resends_that_batch_first() -> None:
    hold = asyncio.Event()
    log = RecordingLog(linger=0.0, hold=hold)
    await log.start()
    first, *rest = events(4)
    log.emit(first)
    await asyncio.sleep(0.05)  # the sender is inside _send with [e0]
    for event in rest:
        log.emit(event)
    hold.set()  # from now on sends go through; close() cancels the stuck one
    await log.close()
    assert log.sent == ["activity.e0", "activity.e1", "activity.e2", "activity.e3"]
