"""The Redis bus in-process against real redis-server: ordering, the cold-channel
race, and recovery when the pub/sub connection or the server goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streams.bus import Bus
from streams.envelope import Envelope, Position
from streams.hub import Item, Reset
from tests.services import RedisProcess


def make_bus(url: str, prefix: str, *, size: int = 100) -> Bus:
    return Bus.redis(url, prefix=prefix, history_size=size, history_ttl=60, queue_size=10_000)


@pytest.fixture
async def bus(redis_url: str, redis_prefix: str) -> AsyncIterator[Bus]:
    bus = make_bus(redis_url, redis_prefix)
    await bus.connect()
    yield bus
    await bus.close()


async def take(items: AsyncIterator[Item], n: int, wait: float = 10.0) -> list[Item]:
    async with asyncio.timeout(wait):
        return [await anext(items) for _ in range(n)]


def offsets(items: list[Item]) -> list[int]:
    return [i.offset for i in items if isinstance(i, Envelope)]


async def test_round_trip_with_contiguous_offsets(bus: Bus) -> None:
    async with bus.stream("institution:a") as items:
        sent = [await bus.publish("institution:a", "note", {"n": n}) for n in range(20)]
        got = await take(items, 20)
    assert [g.data for g in got if isinstance(g, Envelope)] == [{"n": n} for n in range(20)]
    assert offsets(got) == list(range(1, 21)) == [s.offset for s in sent]


async def test_many_subscribers_racing_on_a_cold_channel_all_receive(bus: Bus) -> None:
    ready = asyncio.Event()
    received: list[int] = []

    async def subscriber() -> None:
        async with bus.stream("institution:cold") as items:
            await ready.wait()
            first = await take(items, 1)
            received.append(offsets(first)[0])

    tasks = [asyncio.create_task(subscriber()) for _ in range(50)]
    await asyncio.sleep(0.5)  # all 50 subscribed concurrently on a channel nobody had
    ready.set()
    await bus.publish("institution:cold", "note", {})
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    assert received == [1] * 50
    assert bus.hub.channel_count == 0  # the last one to leave unsubscribed


async def test_resume_since_replays_exactly_the_missed(bus: Bus) -> None:
    await bus.publish("institution:r", "note", {"n": 0})
    position = await bus.position("institution:r")
    for n in range(1, 51):
        await bus.publish("institution:r", "note", {"n": n})
    async with bus.stream("institution:r", position) as items:
        replayed = await take(items, 50)
        await bus.publish("institution:r", "note", {"n": 51})
        live = await take(items, 1)
    assert offsets(replayed + live) == list(range(2, 53))


async def test_pubsub_connection_killed_gap_is_filled_from_history() -> None:
    server = RedisProcess().start()
    try:
        bus = make_bus(server.url, "gap")
        await bus.connect()
        admin = aioredis.Redis.from_url(server.url)
        try:
            async with bus.stream("institution:g") as items:
                await bus.publish("institution:g", "note", {"n": 1})
                await take(items, 1)
                await admin.client_kill_filter(_type="pubsub")
                for n in range(2, 31):  # published while our pub/sub link is down
                    await bus.publish("institution:g", "note", {"n": n})
                got = await take(items, 29)
        finally:
            await admin.aclose()
            await bus.close()
        assert offsets(got) == list(range(2, 31))
    finally:
        server.stop()


@pytest.mark.parametrize("persistent", [True, False])
async def test_redis_restart(persistent: bool) -> None:
    server = RedisProcess(persistent=persistent).start()
    try:
        bus = make_bus(server.url, "restart")
        await bus.connect()
        try:
            async with bus.stream("institution:x") as items:
                for n in range(1, 4):
                    await bus.publish("institution:x", "note", {"n": n})
                before = await take(items, 3)
                await asyncio.to_thread(server.restart)
                await _publish_when_back(bus, {"n": 4})
                first = await take(items, 1)
                await bus.publish("institution:x", "note", {"n": 5})
                got = first + await _until(items, 5)
        finally:
            await bus.close()
    finally:
        server.stop()
    epoch = before[0].epoch if isinstance(before[0], Envelope) else ""
    envelopes = [g for g in got if isinstance(g, Envelope)]
    if persistent:
        # Data survived: same epoch, the offsets simply continue, nothing missing.
        assert got == envelopes and offsets(got) == [4, 5]
        assert {e.epoch for e in envelopes} == {epoch}
    else:
        # History lost: the subscriber is told first (recovered: false), then every
        # message after the announced position follows, in the new epoch, no gap.
        reset = got[0]
        assert isinstance(reset, Reset) and reset.position.epoch != epoch
        assert got[1:] == envelopes
        assert all(e.epoch == reset.position.epoch for e in envelopes)
        assert offsets(got) == list(range(reset.position.offset + 1, envelopes[-1].offset + 1))
        assert envelopes[-1].data == {"n": 5}


async def _until(items: AsyncIterator[Item], n: int) -> list[Item]:
    """Items up to and including the envelope carrying ``{"n": n}``."""
    got: list[Item] = []
    async with asyncio.timeout(15):
        while not got or not (isinstance(got[-1], Envelope) and got[-1].data == {"n": n}):
            got.append(await anext(items))
    return got


async def _publish_when_back(bus: Bus, data: dict[str, int]) -> Envelope:
    async with asyncio.timeout(15):
        while True:
            try:
                await bus.check()
                return await bus.publish("institution:x", "note", data)
            except Exception:
                await asyncio.sleep(0.1)


async def test_a_keyed_republish_gets_its_first_offset_and_sends_nothing(bus: Bus) -> None:
    """What makes the outbox relay idempotent: the second publish of a key returns
    the first one's envelope, adds nothing to history and reaches no subscriber."""
    channel = "institution:keyed"
    async with bus.stream(channel) as items:
        first = await bus.publish(channel, "note", {"n": 1}, key="outbox:1")
        again = await bus.publish(channel, "note", {"n": 1}, key="outbox:1")
        other = await bus.publish(channel, "note", {"n": 2}, key="outbox:2")
        got = await take(items, 2)
    assert (again.offset, again.epoch) == (first.offset, first.epoch)
    assert offsets(got) == [first.offset, other.offset] == [1, 2]
    history = await bus.read_since(channel, Position(0, first.epoch))
    assert history is not None and [e.offset for e in history] == [1, 2]


async def test_keys_live_as_long_as_their_message_is_in_history(
    redis_url: str, redis_prefix: str
) -> None:
    """A key whose message history no longer holds publishes anew (a message nobody
    could recover is worse than a second copy), and the key hash stays bounded."""
    bus = make_bus(redis_url, redis_prefix, size=5)
    await bus.connect()
    try:
        channel = "institution:trimmed"
        first = await bus.publish(channel, "note", {}, key="outbox:first")
        for n in range(30):
            await bus.publish(channel, "note", {"n": n}, key=f"outbox:{n}")
        recent = await bus.publish(channel, "note", {"n": 29}, key="outbox:29")
        assert recent.offset == 31  # still in history: the same offset
        again = await bus.publish(channel, "note", {}, key="outbox:first")
        assert again.offset == 32 and first.offset == 1
        client = aioredis.from_url(redis_url)
        keys = await client.hlen(f"{redis_prefix}:{{{channel}}}:keys")
        await client.aclose()
        assert keys <= 2 * 5
    finally:
        await bus.close()
