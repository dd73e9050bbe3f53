"""The outbox's direct-write path: coalescing, order, back-pressure, the 4008 bound,
closing.

The transport and uvicorn's protocol flags are stood in for by a small fake with
the same attributes the outbox reads (writable event, close_sent, transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from api.multiplex import Coalescer, Outbox
from api.rawsocket import RawSocket


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeProtocol:
    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False


_protocols: list[FakeProtocol] = []  # the current test's, for outbox()


@pytest.fixture
def protocol() -> Iterator[FakeProtocol]:
    fake = FakeProtocol()
    _protocols.append(fake)
    yield fake
    _protocols.remove(fake)


def outbox(limit: int = 4) -> tuple[Outbox, list[str]]:
    overflowed: list[str] = []
    raw = RawSocket(_protocols[-1])
    box = Outbox(Any, limit, lambda: overflowed.append("4008"), Coalescer(), raw)  # type: ignore[arg-type]
    assert box.write_path == "direct"
    return box, overflowed


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_writes_straight_through_while_writable(protocol: FakeProtocol) -> None:
    box, _ = outbox()
    for i in range(10):
        box.push(b"%d" % i)
    assert protocol.transport.written == [b"%d" % i for i in range(10)]
    assert box._task is None  # no task, no queue: nothing waited


async def test_a_burst_leaves_in_one_write_then_direct_again(protocol: FakeProtocol) -> None:
    box, _ = outbox(limit=10)  # holds up to min(HOLD_MAX, limit) frames
    box._coalescer.holding = True  # a pump with more messages queued
    for i in range(5):
        box.push(b"%d" % i)
    box._coalescer.holding = False
    box.push(b"5")  # the burst's last message: behind what is held, not ahead of it
    assert protocol.transport.written == []
    await settle()
    assert protocol.transport.written == [b"012345"]  # one syscall, in order
    box.push(b"a")
    assert protocol.transport.written == [b"012345", b"a"]  # alone: written at once
    assert box._task is None and box._frames is None  # no task, no queue


async def test_connections_of_one_burst_flush_together(protocol: FakeProtocol) -> None:
    coalescer = Coalescer()
    fakes = [FakeProtocol() for _ in range(3)]
    boxes = []
    for fake in fakes:
        box = Outbox(Any, 10, lambda: None, coalescer, RawSocket(fake))  # type: ignore[arg-type]
        boxes.append(box)
    coalescer.holding = True
    for message in (b"m1", b"m2"):
        for box in boxes:
            box.push(message)
    coalescer.holding = False
    flushed: list[int] = []
    coalescer.after_flush(lambda: flushed.append(sum(len(f.transport.written) for f in fakes)))
    await settle()
    assert [f.transport.written for f in fakes] == [[b"m1m2"]] * 3
    assert flushed == [3]  # after_flush runs once every connection was written


async def test_back_pressure_queues_in_order_then_drains(protocol: FakeProtocol) -> None:
    box, overflowed = outbox(limit=10)
    box.push(b"a")
    protocol.writable.clear()  # uvicorn's pause_writing
    box.push(b"b")
    box.push(b"c")
    await settle()
    assert protocol.transport.written == [b"a"]
    protocol.writable.set()  # resume_writing
    box.push(b"d")  # queued behind b and c even though the socket is writable again
    await settle()
    assert protocol.transport.written == [b"a", b"b", b"c", b"d"]
    assert box._task is None and box._frames is None and not overflowed


async def test_held_frames_queue_when_the_socket_pauses_before_the_flush(
    protocol: FakeProtocol,
) -> None:
    box, overflowed = outbox(limit=10)
    box._coalescer.holding = True
    box.push(b"a")
    box.push(b"b")
    box._coalescer.holding = False
    protocol.writable.clear()  # paused by another connection's write in the same step
    await settle()
    assert protocol.transport.written == []
    box.push(b"c")  # behind the queued a and b
    protocol.writable.set()
    await settle()
    assert b"".join(protocol.transport.written) == b"abc" and not overflowed


async def test_a_held_burst_over_the_limit_is_cut_at_the_flush(protocol: FakeProtocol) -> None:
    box, overflowed = outbox(limit=4)
    protocol.writable.clear()
    box._coalescer.holding = True
    for i in range(20):
        box.push(b"%d" % i)
    box._coalescer.holding = False
    await settle()
    assert overflowed == ["4008"] and box.overflowed
    protocol.writable.set()
    await settle()
    assert protocol.transport.written == []


async def test_a_peer_that_stops_reading_is_cut_once(protocol: FakeProtocol) -> None:
    box, overflowed = outbox(limit=4)
    protocol.writable.clear()
    for i in range(20):
        box.push(b"%d" % i)
    assert overflowed == ["4008"]
    assert box.overflowed
    for i in range(5):
        box.push(b"late %d" % i)  # after the cut: dropped
    protocol.writable.set()
    await settle()
    assert protocol.transport.written == []  # nothing after the cut
    assert overflowed == ["4008"]


async def test_a_peer_that_stops_reading_is_cut_within_one_burst(
    protocol: FakeProtocol,
) -> None:
    """A burst longer than the hold limit is written early, so back-pressure (here:
    the transport pauses after any write) and the 4008 cut apply inside the burst."""
    written = protocol.transport.written

    class PausingTransport(FakeTransport):
        def write(self, data: bytes) -> None:
            written.append(data)
            protocol.writable.clear()  # uvicorn's pause_writing, past the high water

    protocol.transport = PausingTransport()
    box, overflowed = outbox(limit=4)
    box._coalescer.holding = True
    for i in range(50):
        box.push(b"%d" % i)
    box._coalescer.holding = False
    await settle()
    assert written == [b"0123"]  # one early write of the first 4, then held back
    assert overflowed == ["4008"] and box.overflowed


async def test_a_close_before_the_flush_drops_the_burst(protocol: FakeProtocol) -> None:
    box, overflowed = outbox()
    box._coalescer.holding = True
    box.push(b"x")
    box._coalescer.holding = False
    protocol.writable.clear()
    await box.close()  # the connection's handler ended before the flush ran
    await settle()
    assert box._task is None and box._frames is None  # no drain task for a gone owner
    assert protocol.transport.written == [] and not overflowed


async def test_closed_socket_drops_the_queue(protocol: FakeProtocol) -> None:
    box, overflowed = outbox()
    protocol.writable.clear()
    box.push(b"x")
    protocol.close_sent = True
    protocol.writable.set()
    await settle()
    assert protocol.transport.written == [] and not overflowed
    box.push(b"y")  # after close: never written straight through
    await settle()
    assert protocol.transport.written == []


async def test_frames_held_when_the_socket_closes_are_not_written(
    protocol: FakeProtocol,
) -> None:
    box, overflowed = outbox()
    box._coalescer.holding = True
    box.push(b"x")
    box._coalescer.holding = False
    protocol.close_sent = True  # e.g. shutdown's 1001 in the same step
    await settle()
    assert protocol.transport.written == [] and not overflowed


async def test_paced_replay_waits_for_room_instead_of_overflowing(
    protocol: FakeProtocol,
) -> None:
    box, overflowed = outbox(limit=4)
    protocol.writable.clear()

    async def replay() -> None:
        for i in range(12):
            await box.push_paced(b"%d" % i)

    task = asyncio.create_task(replay())
    await settle()
    assert not task.done()  # held back at half the limit, not cut
    protocol.writable.set()
    async with asyncio.timeout(5):
        await task
    await settle()
    assert b"".join(protocol.transport.written) == b"".join(b"%d" % i for i in range(12))
    assert not overflowed
