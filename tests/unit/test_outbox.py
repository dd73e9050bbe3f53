"""The outbox's direct-write path: order, back-pressure, the 4008 bound, closing.

The transport and uvicorn's protocol flags are stood in for by a small fake with
the same attributes the outbox reads (writable event, close_sent, transport).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import api.multiplex
from api.multiplex import Outbox
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


@pytest.fixture
def protocol(monkeypatch: pytest.MonkeyPatch) -> FakeProtocol:
    fake = FakeProtocol()
    monkeypatch.setattr(api.multiplex.RawSocket, "of", classmethod(lambda cls, ws: RawSocket(fake)))
    return fake


def outbox(limit: int = 4) -> tuple[Outbox, list[str]]:
    overflowed: list[str] = []
    box = Outbox(Any, limit, lambda: overflowed.append("4008"))  # type: ignore[arg-type]
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


async def test_a_peer_that_stops_reading_is_cut_once(protocol: FakeProtocol) -> None:
    box, overflowed = outbox(limit=4)
    protocol.writable.clear()
    for i in range(20):
        box.push(b"%d" % i)
    assert overflowed == ["4008"]
    assert box.overflowed
    protocol.writable.set()
    await settle()
    assert protocol.transport.written == []  # nothing after the cut


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
    assert protocol.transport.written == [b"%d" % i for i in range(12)]
    assert not overflowed
