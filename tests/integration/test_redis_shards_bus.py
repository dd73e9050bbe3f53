"""The bus on a list of independent Redis servers (``redis://a,redis://b``), each
started by this test: a channel lives on the shard of its hash slot, and a shard
that restarts empty disturbs only its own channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from streams.bus import Bus
from streams.envelope import Position
from streams.hub import Item, Reset
from streams.redis_client import shard_of
from tests.integration.test_redis_cluster_bus import publish_when_back, until_ready
from tests.services import RedisProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def shards() -> Iterator[list[RedisProcess]]:
    started = [RedisProcess().start(), RedisProcess().start()]
    yield started
    for server in started:
        server.stop()


def url_of(shards: list[RedisProcess]) -> str:
    return ",".join(s.url for s in shards)


def make_bus(shards: list[RedisProcess]) -> Bus:
    return Bus.redis(
        url_of(shards), prefix="sh", history_size=1000, history_ttl=60, queue_size=10_000
    )


def channels_by_shard(per_shard: int = 2) -> list[list[str]]:
    found: list[list[str]] = [[], []]
    n = 0
    while any(len(f) < per_shard for f in found):
        channel = f"institution:k{n}"
        if len(found[shard_of(channel, 2)]) < per_shard:
            found[shard_of(channel, 2)].append(channel)
        n += 1
    return found


async def take(items: AsyncIterator[Item], n: int, wait: float = 15.0) -> list[Item]:
    async with asyncio.timeout(wait):
        return [await anext(items) for _ in range(n)]


async def test_each_channel_lives_on_its_shard_only(shards: list[RedisProcess]) -> None:
    bus = make_bus(shards)
    await bus.connect()
    admins = [aioredis.Redis.from_url(s.url) for s in shards]
    try:
        for home, channels in enumerate(channels_by_shard()):
            for channel in channels:
                async with bus.stream(channel) as items:
                    sent = [await bus.publish(channel, "note", {"n": n}) for n in range(3)]
                    got = await take(items, 3)
                assert [i.position for i in got] == [e.position for e in sent]
                assert [e.offset for e in sent] == [1, 2, 3]
                since = Position(1, sent[0].epoch)
                assert [e.offset for e in await bus.read_since(channel, since) or []] == [2, 3]
                for index, admin in enumerate(admins):
                    stored = await admin.exists(f"sh:{{{channel}}}:meta")
                    assert stored == (1 if index == home else 0), (channel, index)
        await bus.check()
    finally:
        for admin in admins:
            await admin.aclose()
        await bus.close()


async def test_a_shard_restarted_empty_resets_only_its_channels(
    shards: list[RedisProcess],
) -> None:
    bus = make_bus(shards)
    await bus.connect()
    by_shard = channels_by_shard(per_shard=1)
    lost, kept = by_shard[0][0], by_shard[1][0]
    try:
        async with bus.stream(lost) as lost_items, bus.stream(kept) as kept_items:
            for channel in (lost, kept):
                await bus.publish(channel, "note", {"n": 1})
            assert [i.offset for i in await take(lost_items, 1)] == [1]
            assert [i.offset for i in await take(kept_items, 1)] == [1]

            await asyncio.to_thread(shards[0].stop)
            with pytest.raises(RuntimeError, match="shard 0"):
                await bus.check()  # readiness names the shard that is down
            await bus.publish(kept, "note", {"n": 2})  # the other shard goes on
            assert [i.offset for i in await take(kept_items, 1)] == [2]
            await asyncio.to_thread(shards[0].start)  # empty: no persistence

            first_of_new_epoch = await publish_when_back(bus, lost, {"n": 2}, wait=15)
            got = await take(lost_items, 2)
            await bus.publish(kept, "note", {"n": 3})
            assert [i.offset for i in await take(kept_items, 1)] == [3]
        assert isinstance(got[0], Reset) and got[0].position.epoch == first_of_new_epoch.epoch
        assert got[1] == first_of_new_epoch or got[1].position == first_of_new_epoch.position
        await until_ready(bus, wait=10)
    finally:
        await bus.close()


def test_a_shard_list_refuses_a_listed_twice_or_foreign_url() -> None:
    from streams.redis_client import parse_redis_url

    with pytest.raises(ValueError, match="listed twice"):
        parse_redis_url("redis://a:1/0,redis://a:1/0")
    with pytest.raises(ValueError, match="shard list takes redis://"):
        parse_redis_url("redis://a:1/0,redis+cluster://b:2")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        parse_redis_url("redis://a:1,b:2")
