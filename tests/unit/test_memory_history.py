"""Unit tests for MemoryChannelLog (streams/history.py) over a real memory broadcaster."""

from __future__ import annotations

import asyncio

from broadcaster import Broadcast

from streams.envelope import Envelope, Position, decode
from streams.history import MemoryChannelLog

CH = "institution:nw"
CH2 = "institution:nw:alerts"


def make_log(broadcast: Broadcast, size: int = 100, ttl: float = 600) -> MemoryChannelLog:
    return MemoryChannelLog(broadcast, size=size, ttl_seconds=ttl)


async def publish_n(log: MemoryChannelLog, channel: str, n: int) -> list[Envelope]:
    return [await log.publish(channel, "msg", {"i": i}) for i in range(1, n + 1)]


async def test_offsets_contiguous_from_one(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    envs = await publish_n(log, CH, 5)
    assert [e.offset for e in envs] == [1, 2, 3, 4, 5]
    assert len({e.epoch for e in envs}) == 1
    assert [e.data for e in envs] == [{"i": i} for i in range(1, 6)]
    assert all(e.channel == CH and e.kind == "msg" for e in envs)


async def test_channels_are_independent(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    a1 = await log.publish(CH, "k", {})
    b1 = await log.publish(CH2, "k", {})
    a2 = await log.publish(CH, "k", {})
    b2 = await log.publish(CH2, "k", {})
    b3 = await log.publish(CH2, "k", {})
    assert [a1.offset, a2.offset] == [1, 2]
    assert [b1.offset, b2.offset, b3.offset] == [1, 2, 3]
    assert (await log.position(CH)).offset == 2
    assert (await log.position(CH2)).offset == 3
    assert a1.channel == CH and b1.channel == CH2


async def test_position(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    start = await log.position(CH)
    assert start.offset == 0
    assert start.epoch
    assert await log.position(CH) == start  # stable before any publish
    envs = await publish_n(log, CH, 3)
    head = await log.position(CH)
    assert head == Position(3, start.epoch)
    assert head == envs[-1].position


async def test_read_since_returns_messages_after_position(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    start = await log.position(CH)
    envs = await publish_n(log, CH, 6)
    assert await log.read_since(CH, start) == envs
    assert await log.read_since(CH, envs[1].position) == envs[2:]
    assert await log.read_since(CH, envs[4].position) == envs[5:]
    got = await log.read_since(CH, Position(3, start.epoch))
    assert got is not None
    assert [e.offset for e in got] == [4, 5, 6]
    assert [e.data["i"] for e in got] == [4, 5, 6]


async def test_read_since_head_is_empty(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    head = await log.position(CH)
    assert await log.read_since(CH, head) == []
    await publish_n(log, CH, 3)
    head = await log.position(CH)
    assert await log.read_since(CH, head) == []


async def test_read_since_trimmed_past_is_none(broadcast: Broadcast) -> None:
    log = make_log(broadcast, size=3)
    envs = await publish_n(log, CH, 10)
    epoch = envs[0].epoch
    assert await log.read_since(CH, Position(2, epoch)) is None
    assert await log.read_since(CH, Position(0, epoch)) is None
    assert await log.read_since(CH, Position(6, epoch)) is None  # 7 is gone too
    # The last `size` messages are retained and reachable.
    assert await log.read_since(CH, Position(7, epoch)) == envs[7:]
    assert await log.read_since(CH, Position(9, epoch)) == envs[9:]


async def test_read_since_other_epoch_is_none(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    envs = await publish_n(log, CH, 3)
    other_epoch = envs[0].epoch + "x"
    assert await log.read_since(CH, Position(1, other_epoch)) is None
    assert await log.read_since(CH, Position(3, other_epoch)) is None
    assert await log.read_since(CH, Position(0, other_epoch)) is None


async def test_read_since_ahead_of_head_is_none(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    envs = await publish_n(log, CH, 3)
    assert await log.read_since(CH, Position(4, envs[0].epoch)) is None
    assert await log.read_since(CH, Position(100, envs[0].epoch)) is None


async def test_new_log_starts_a_new_epoch(broadcast: Broadcast) -> None:
    first = make_log(broadcast)
    envs = await publish_n(first, CH, 2)
    restarted = make_log(broadcast)
    assert (await restarted.position(CH)).epoch != envs[0].epoch
    assert await restarted.read_since(CH, envs[0].position) is None


async def test_ttl_expiry_makes_old_positions_unrecoverable(broadcast: Broadcast) -> None:
    log = make_log(broadcast, ttl=0.05)
    envs = await publish_n(log, CH, 3)
    assert await log.read_since(CH, envs[0].position) == envs[1:]
    await asyncio.sleep(0.1)
    assert await log.read_since(CH, envs[0].position) is None
    assert await log.read_since(CH, Position(0, envs[0].epoch)) is None
    assert await log.read_since(CH, envs[-1].position) == []  # the head is still fine
    fresh = await log.publish(CH, "msg", {"i": 4})
    assert fresh.offset == 4  # offsets keep growing after expiry
    assert await log.read_since(CH, envs[-1].position) == [fresh]
    assert await log.read_since(CH, envs[1].position) is None


async def test_subscriber_receives_the_returned_envelope(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    async with broadcast.subscribe(CH) as sub:
        published = await log.publish(CH, "announcement", {"title": "Bonjour ✓"})
        event = await asyncio.wait_for(sub.get(), timeout=2)
    assert event.channel == CH
    assert decode(event.message) == published


async def test_subscriber_sees_publish_order(broadcast: Broadcast) -> None:
    log = make_log(broadcast)
    async with broadcast.subscribe(CH) as sub:
        envs = await publish_n(log, CH, 5)
        received = [decode((await asyncio.wait_for(sub.get(), timeout=2)).message) for _ in envs]
    assert received == envs
    assert [e.offset for e in received] == [1, 2, 3, 4, 5]
