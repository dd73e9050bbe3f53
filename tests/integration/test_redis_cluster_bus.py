"""The bus on a real Redis Cluster (3 masters + replicas, tests/redis_cluster.py):
sharded Pub/Sub per slot, history and offsets per channel slot, one reader per
shard, and a shard that fails over or dies gapping only its own channels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from streams.bus import Bus
from streams.envelope import Envelope, Position
from streams.hub import Item, Reset
from streams.redis_backend import GAP
from streams.redis_client import REDIS_DOWN, cluster_client
from streams.redis_sharded import ShardedPubSubBackend
from tests.redis_cluster import RedisCluster

pytestmark = pytest.mark.timeout(120)


def make_bus(url: str, prefix: str) -> Bus:
    return Bus.redis(url, prefix=prefix, history_size=1000, history_ttl=60, queue_size=10_000)


def spread(cluster: RedisCluster, prefix: str, per_master: int = 2) -> dict[int, list[str]]:
    """Channels whose pubsub name (and so history) lands on each master, by port."""
    found: dict[int, list[str]] = {m.port: [] for m in cluster.masters()}
    n = 0
    while any(len(v) < per_master for v in found.values()):
        channel = f"institution:s{n}:alerts"
        port = cluster.master_for_key(f"{prefix}:ch:{{{channel}}}").port
        if len(found[port]) < per_master:
            found[port].append(channel)
        n += 1
    return found


def channel_on(cluster: RedisCluster, prefix: str, port: int, stem: str) -> str:
    """A channel whose slot the master on ``port`` serves."""
    return next(
        c
        for c in (f"institution:{stem}{n}" for n in range(10_000))
        if cluster.master_for_key(f"{prefix}:ch:{{{c}}}").port == port
    )


async def publish_when_back(
    bus: Bus, channel: str, data: dict[str, Any], wait: float = 30.0
) -> Envelope:
    """Publish, retrying while the channel's Redis is away (failing over, restarting)."""
    async with asyncio.timeout(wait):
        while True:
            try:
                return await bus.publish(channel, "note", data)
            except REDIS_DOWN:
                await asyncio.sleep(0.2)


async def until_ready(bus: Bus, wait: float = 15.0) -> None:
    async with asyncio.timeout(wait):
        while True:
            try:
                await bus.check()
                return
            except RuntimeError:
                await asyncio.sleep(0.2)


def until_master(cluster: RedisCluster, port: int, wait: float = 30.0) -> None:
    deadline = time.monotonic() + wait
    while cluster.role(port) != "master":
        assert time.monotonic() < deadline, f"{port} was not promoted"
        time.sleep(0.2)


async def take(items: AsyncIterator[Item], n: int, wait: float = 15.0) -> list[Item]:
    async with asyncio.timeout(wait):
        return [await anext(items) for _ in range(n)]


@pytest.fixture
async def bus(redis_cluster: RedisCluster) -> AsyncIterator[Bus]:
    bus = make_bus(redis_cluster.cluster_url, "cb")
    await bus.connect()
    yield bus
    await bus.close()


async def test_channels_on_every_master_round_trip_with_offsets_and_history(
    bus: Bus, redis_cluster: RedisCluster
) -> None:
    channels = [c for cs in spread(redis_cluster, "cb").values() for c in cs]
    async with asyncio.TaskGroup() as group:
        streams = [bus.stream(c) for c in channels]
        iterators = [await s.__aenter__() for s in streams]
        sent = {c: [await bus.publish(c, "note", {"n": n}) for n in range(3)] for c in channels}
        results = [group.create_task(take(it, 3)) for it in iterators]
    for channel, result in zip(channels, results, strict=True):
        got = result.result()
        assert [i.offset for i in got if isinstance(i, Envelope)] == [1, 2, 3]
        assert [e.position for e in sent[channel]] == [i.position for i in got]
        assert await bus.position(channel) == sent[channel][-1].position
        assert [
            e.offset for e in await bus.read_since(channel, Position(1, got[0].epoch)) or []
        ] == [2, 3]
    for s in streams:
        await s.__aexit__(None, None, None)


async def test_a_message_crosses_only_its_shard(bus: Bus, redis_cluster: RedisCluster) -> None:
    """Classic PUBLISH would reach a SUBSCRIBE on any node; SPUBLISH only its shard."""
    by_master = spread(redis_cluster, "cb", per_master=1)
    ports = list(by_master)
    channel = by_master[ports[0]][0]
    name = f"cb:ch:{{{channel}}}"
    elsewhere = aioredis.Redis(host="127.0.0.1", port=ports[1])
    home = aioredis.Redis(host="127.0.0.1", port=ports[0])
    classic, sharded = elsewhere.pubsub(), home.pubsub()
    try:
        await classic.subscribe(name)
        await sharded.ssubscribe(name)
        await asyncio.sleep(0.2)
        await bus.publish(channel, "note", {"n": 1})
        async with asyncio.timeout(5):
            while (m := await sharded.get_message(timeout=1.0)) is None or m["type"] != "smessage":
                pass
        assert b'"n":1' in m["data"]
        others = [await classic.get_message(timeout=0.3) for _ in range(3)]
        assert [m for m in others if m and m["type"] == "message"] == []
    finally:
        for ps in (classic, sharded):
            await ps.aclose()
        for c in (elsewhere, home):
            await c.aclose()


async def test_resume_since_replays_exactly_the_missed(
    bus: Bus, redis_cluster: RedisCluster
) -> None:
    for channels in spread(redis_cluster, "cb", per_master=1).values():
        channel = channels[0] + ":resume"
        first = await bus.publish(channel, "note", {"n": 0})
        for n in range(1, 6):
            await bus.publish(channel, "note", {"n": n})
        async with bus.stream(channel, since=first.position) as items:
            got = await take(items, 5)
        assert [i.offset for i in got if isinstance(i, Envelope)] == [2, 3, 4, 5, 6]
        assert not any(isinstance(i, Reset) for i in got)


async def test_readiness_fails_when_one_master_does_not_take_publishes(
    bus: Bus, redis_cluster: RedisCluster
) -> None:
    """A master that answers PING but takes no writes (paused here) is a shard whose
    channels are undeliverable: the check names it, and passes once it is back."""
    await bus.check()
    master = redis_cluster.masters()[1]
    redis_cluster.call(master.port, "CLIENT", "PAUSE", "3000", "WRITE")
    try:
        assert redis_cluster.call(master.port, "PING") == "True"  # what a ping check saw
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{master.port}"):
            await bus.check()
    finally:
        redis_cluster.call(master.port, "CLIENT", "UNPAUSE")
    await bus.check()


@pytest.mark.parametrize("how", ["failover", "kill"])
async def test_a_broken_shard_gaps_only_its_channels_and_recovers(
    redis_cluster: RedisCluster, how: str
) -> None:
    """Failover: Redis drops the old master's shard subscriptions (sunsubscribe).
    Kill: the reader's connection breaks. Either way only that shard's channels are
    resubscribed at the new master and marked with a gap; the others go on."""
    prefix = f"gap{how}"
    by_master = spread(redis_cluster, prefix)
    victim = sorted(by_master)[0]
    backend = ShardedPubSubBackend(redis_cluster.cluster_url, prefix=prefix, max_backoff=0.5)
    await backend.connect()
    publisher = cluster_client(redis_cluster.cluster_url)
    try:
        for channels in by_master.values():
            for channel in channels:
                await backend.subscribe(channel)
        assert backend.connected
        replica = redis_cluster.replica_of(victim)
        if how == "failover":
            await asyncio.to_thread(redis_cluster.failover, replica.port)
        else:
            await asyncio.to_thread(redis_cluster.kill, victim)
        gaps: set[str] = set()
        async with asyncio.timeout(30):
            while gaps != set(by_master[victim]):
                event = await backend.next_published()
                assert event.message == GAP, event
                assert event.channel in by_master[victim], "a healthy shard was gapped"
                gaps.add(event.channel)
        assert backend.connected
        await backend.check()
        # Every channel, on the new master too, is live again.
        for channels in by_master.values():
            for channel in channels:
                await publisher.spublish(backend.pubsub_channel(channel), f"after-{channel}")
        expected = {c for cs in by_master.values() for c in cs}
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while seen != expected:
                event = await backend.next_published()
                assert event.message == f"after-{event.channel}"
                seen.add(event.channel)
    finally:
        await publisher.aclose()
        await backend.disconnect()
        if how == "kill":
            await asyncio.to_thread(redis_cluster.revive, victim)


async def test_concurrent_first_subscribes_on_a_master_all_deliver(
    redis_cluster: RedisCluster,
) -> None:
    """A herd of first subscribers at once (found by bench/shards.py): each
    channel of a master must be read, not only the last subscribe's."""
    by_master = spread(redis_cluster, "herd", per_master=4)
    channels = [c for cs in by_master.values() for c in cs]
    backend = ShardedPubSubBackend(redis_cluster.cluster_url, prefix="herd")
    await backend.connect()
    publisher = cluster_client(redis_cluster.cluster_url)
    try:
        await asyncio.gather(*(backend.subscribe(c) for c in channels))
        for channel in channels:
            await publisher.spublish(backend.pubsub_channel(channel), channel)
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while seen != set(channels):
                event = await backend.next_published()
                assert event.message == event.channel
                seen.add(event.channel)
    finally:
        await publisher.aclose()
        await backend.disconnect()


async def test_writes_a_failover_lost_end_in_a_reset_never_a_silent_gap(
    redis_cluster: RedisCluster,
) -> None:
    """Replication is asynchronous: a master can acknowledge messages its replica
    never got, then die. The promoted replica must not hand their offsets out again
    in the same epoch (live subscribers would drop the new messages as seen, and
    resumes would miss the lost ones): its first write starts a new epoch."""
    victim = redis_cluster.masters()[0].port
    replica = redis_cluster.replica_of(victim).port
    channel = channel_on(redis_cluster, "lost", victim, "lost")
    sub = make_bus(redis_cluster.cluster_url, "lost")
    pub = make_bus(redis_cluster.cluster_url, "lost")
    await sub.connect()
    await pub.connect()
    replica_pid = redis_cluster.processes[replica].pid
    try:
        async with sub.stream(channel) as items:
            first = await pub.publish(channel, "note", {"n": "a1"})
            assert [i.position for i in await take(items, 1)] == [first.position]
            # Replication lag made certain: the replica is stopped and cut off while
            # the master acknowledges three more.
            os.kill(replica_pid, signal.SIGSTOP)
            redis_cluster.call(victim, "CLIENT", "KILL", "TYPE", "replica")
            lost = [await pub.publish(channel, "note", {"n": f"a{n}"}) for n in (2, 3, 4)]
            assert [i.position for i in await take(items, 3)] == [e.position for e in lost]
            redis_cluster.kill(victim)
            os.kill(replica_pid, signal.SIGCONT)
            await asyncio.to_thread(redis_cluster.wait_ok)

            after = [await publish_when_back(pub, channel, {"n": f"b{n}"}) for n in (1, 2, 3, 4)]
            assert len({e.epoch for e in after}) == 1 and after[0].epoch != first.epoch
            assert [e.offset for e in after] == [1, 2, 3, 4]
            got = await take(items, 5)
        assert isinstance(got[0], Reset) and got[0].position.epoch == after[0].epoch
        assert [i.data["n"] for i in got[1:] if isinstance(i, Envelope)] == ["b1", "b2", "b3", "b4"]
        async with sub.stream(channel, since=lost[-1].position) as resumed:
            assert isinstance(await anext(resumed), Reset)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica_pid, signal.SIGCONT)
        await pub.close()
        await sub.close()
        await asyncio.to_thread(redis_cluster.revive, victim)


async def test_a_hung_master_failed_over_is_noticed_without_an_error(
    redis_cluster: RedisCluster,
) -> None:
    """A stopped master keeps its TCP connections open and sends nothing: no reader
    sees an error. Once Redis promotes its replica, the slot map says so, and its
    channels move there (a reset: the replica may lack what the master had)."""
    victim = redis_cluster.masters()[-1].port
    replica = redis_cluster.replica_of(victim).port
    channel = channel_on(redis_cluster, "hung", victim, "hung")
    sub = make_bus(redis_cluster.cluster_url, "hung")
    pub = make_bus(redis_cluster.cluster_url, "hung")
    await sub.connect()
    await pub.connect()
    victim_pid = redis_cluster.processes[victim].pid
    try:
        async with sub.stream(channel) as items:
            first = await pub.publish(channel, "note", {"n": "a1"})
            assert [i.position for i in await take(items, 1)] == [first.position]
            os.kill(victim_pid, signal.SIGSTOP)
            await asyncio.to_thread(until_master, redis_cluster, replica)
            sent = [await publish_when_back(pub, channel, {"n": f"b{n}"}) for n in (1, 2, 3)]
            got = await take(items, 4, wait=20)  # the victim is still stopped
        assert isinstance(got[0], Reset)
        assert [i.position for i in got[1:]] == [e.position for e in sent]
        await until_ready(sub)
    finally:
        os.kill(victim_pid, signal.SIGCONT)
        await pub.close()
        await sub.close()
        await asyncio.to_thread(redis_cluster.wait_ok)


async def test_a_quick_unsubscribe_and_resubscribe_is_not_a_moved_slot(
    redis_cluster: RedisCluster,
) -> None:
    """A page reload unsubscribes and resubscribes a channel at once: the reply to
    our own unsubscribe must not read as Redis dropping the channel (a gap marker,
    a history read and a slot-map refresh for nothing)."""
    channel = spread(redis_cluster, "resub", per_master=1)[redis_cluster.masters()[0].port][0]
    backend = ShardedPubSubBackend(redis_cluster.cluster_url, prefix="resub")
    await backend.connect()
    publisher = cluster_client(redis_cluster.cluster_url)
    try:
        await backend.subscribe(channel)
        for n in range(5):
            await backend.unsubscribe(channel)
            await backend.subscribe(channel)
            await publisher.spublish(backend.pubsub_channel(channel), f"m{n}")
            async with asyncio.timeout(5):
                event = await backend.next_published()
            assert (event.channel, event.message) == (channel, f"m{n}")
        assert backend.reconnects == 0 and backend.connected
    finally:
        await publisher.aclose()
        await backend.disconnect()
