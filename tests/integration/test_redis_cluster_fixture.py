"""The ``redis_cluster`` fixture itself (tests/redis_cluster.py), and what redis-py's
cluster client does on it: slots, routing, sharded Pub/Sub across shards and from a
replica, a coordinated failover and a killed master. What these show is written up
in docs/redis-cluster-notes.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterNode, ClusterPubSub
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.redis_cluster import SLOTS, RedisCluster


def connect(cluster: RedisCluster) -> AsyncRedisCluster:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return AsyncRedisCluster(startup_nodes=nodes, decode_responses=True)


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    client = connect(redis_cluster)
    await client.initialize()  # get_node_from_key reads the slot map without fetching it
    yield client
    await client.aclose()


def one_per_master(cluster: RedisCluster, prefix: str) -> dict[int, str]:
    """A hash tag per master port: ``{tag}`` keys and channels land on that master."""
    masters = cluster.masters()
    tags: dict[int, str] = {}
    i = 0
    while len(tags) < len(masters):
        tag = f"{prefix}-{i}"
        slot = cluster.keyslot(tag)
        tags.setdefault(next(m.port for m in masters if m.serves(slot)), tag)
        i += 1
    return tags


async def sharded(pubsub: ClusterPubSub, count: int, wait: float = 5.0) -> list[dict[str, Any]]:
    """Up to ``count`` messages (subscribe confirmations included) within ``wait``."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while len(got) < count and time.monotonic() < deadline:
        message = await pubsub.get_sharded_message(timeout=0.1)
        if message is not None:
            got.append(message)
    return got


def data(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["channel"], m["data"]) for m in messages if m["type"] == "smessage"]


async def test_all_slots_are_served_by_three_masters_each_with_a_replica(
    redis_cluster: RedisCluster,
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    served = sorted(slot for m in masters for lo, hi in m.slots for slot in range(lo, hi + 1))
    assert served == list(range(SLOTS))
    replicas = redis_cluster.replicas()
    assert sorted(r.master_port for r in replicas) == sorted(m.port for m in masters)
    assert {redis_cluster.role(r.port) for r in replicas} == {"slave"}
    for port in redis_cluster.live_ports:
        assert "cluster_state:ok" in redis_cluster.call(port, "CLUSTER", "INFO")
    assert redis_cluster.url in redis_cluster.urls
    assert len(redis_cluster.startup_nodes) == 6


async def test_client_writes_and_reads_keys_on_every_master(
    redis_cluster: RedisCluster, client: AsyncRedisCluster, redis_prefix: str
) -> None:
    tags = one_per_master(redis_cluster, redis_prefix)
    for port, tag in tags.items():
        key = f"{{{tag}}}:k"
        assert redis_cluster.master_for_key(key).port == port
        assert client.get_node_from_key(key).port == port
        await client.set(key, f"on {port}")
        assert await client.get(key) == f"on {port}"
        # The key really is on that master (asked directly, no cluster client).
        assert redis_cluster.call(port, "EXISTS", key) == "1"


async def test_sharded_pubsub_delivers_from_every_shard_to_one_subscriber(
    redis_cluster: RedisCluster, client: AsyncRedisCluster, redis_prefix: str
) -> None:
    channels = [f"{{{tag}}}:ch" for tag in one_per_master(redis_cluster, redis_prefix).values()]
    subscriber = connect(redis_cluster)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.ssubscribe(*channels)
        confirmed = await sharded(pubsub, len(channels))
        assert sorted(m["channel"] for m in confirmed) == sorted(channels)
        assert {m["type"] for m in confirmed} == {"ssubscribe"}
        # One connection per shard, each to the master that owns the channel's slot.
        assert len(pubsub.node_pubsub_mapping) == 3
        for channel in channels:
            # SPUBLISH counts only subscribers on the node it ran on: the master here.
            assert await client.spublish(channel, f"to {channel}") == 1
        received = await sharded(pubsub, len(channels))
        assert sorted(data(received)) == sorted((c, f"to {c}") for c in channels)
    finally:
        await pubsub.aclose()
        await subscriber.aclose()


async def test_a_replica_serves_sharded_subscribers_of_its_shard(
    redis_cluster: RedisCluster, client: AsyncRedisCluster, redis_prefix: str
) -> None:
    channel = f"{{{redis_prefix}}}:ch"
    replica = redis_cluster.replica_of(redis_cluster.master_for_key(channel).port)
    direct = aioredis.Redis(port=replica.port, decode_responses=True)
    pubsub = direct.pubsub()
    try:
        await pubsub.ssubscribe(channel)
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None and confirmation["type"] == "ssubscribe"
        # Published on the master; the shard forwards it to its replica. The count
        # is 0: the subscriber is not on the master.
        assert await client.spublish(channel, "via the replica") == 0
        message = await pubsub.get_message(timeout=5)
        assert message is not None
        assert (message["type"], message["data"]) == ("smessage", "via the replica")
    finally:
        await pubsub.aclose()
        await direct.aclose()


def test_sync_cluster_client_has_the_same_sharded_pubsub(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in redis_cluster.startup_nodes]
    client = redis.cluster.RedisCluster(startup_nodes=nodes, decode_responses=True)
    pubsub = client.pubsub()
    try:
        channel = f"{{{redis_prefix}}}:sync"

        def next_message() -> dict[str, Any] | None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                message = pubsub.get_sharded_message(timeout=0.1)
                if message is not None:
                    return message
            return None

        pubsub.ssubscribe(channel)
        confirmation = next_message()
        assert confirmation is not None and confirmation["type"] == "ssubscribe"
        assert client.spublish(channel, "sync") == 1
        message = next_message()
        assert message is not None
        assert (message["type"], message["data"]) == ("smessage", "sync")
    finally:
        pubsub.close()
        client.close()


async def test_failover_promotes_the_replica_and_the_client_follows(
    redis_cluster: RedisCluster, client: AsyncRedisCluster, redis_prefix: str
) -> None:
    key, channel = f"{{{redis_prefix}}}:k", f"{{{redis_prefix}}}:ch"
    master = redis_cluster.master_for_key(key)
    replica = redis_cluster.replica_of(master.port)
    await client.set(key, "before")
    subscriber = connect(redis_cluster)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.ssubscribe(channel)
        assert [m["type"] for m in await sharded(pubsub, 1)] == ["ssubscribe"]

        await asyncio.to_thread(redis_cluster.failover, replica.port)

        assert redis_cluster.master_for_key(key).port == replica.port
        assert redis_cluster.role(master.port) == "slave"
        assert redis_cluster.replica_of(replica.port).port == master.port
        # The client's slot map still names the old master: MOVED takes it on.
        assert await client.get(key) == "before"
        await client.set(key, "after")
        assert await client.get(key) == "after"
        assert client.get_node_from_key(key).port == replica.port

        # A shard subscriber is never dropped silently: either delivery goes on, or
        # the server pushes ``sunsubscribe`` (Redis 7.0 does, when the old master
        # turns replica). Then refreshing the subscribing client's slot map makes
        # redis-py subscribe again at the new master.
        await client.spublish(channel, "after failover")
        first = await sharded(pubsub, 1)
        assert first and first[0]["type"] in {"smessage", "sunsubscribe"}, first
        if first[0]["type"] == "sunsubscribe":
            await subscriber.nodes_manager.initialize()
            again = await sharded(pubsub, 2)
            assert [m["type"] for m in again if m["type"] == "ssubscribe"] == ["ssubscribe"]
            assert await client.spublish(channel, "after resubscribing") == 1
            assert data(await sharded(pubsub, 1)) == [(channel, "after resubscribing")]
    finally:
        await pubsub.aclose()
        await subscriber.aclose()


async def test_killed_master_is_replaced_by_its_replica(
    redis_cluster: RedisCluster, client: AsyncRedisCluster, redis_prefix: str
) -> None:
    key, channel = f"{{{redis_prefix}}}:k", f"{{{redis_prefix}}}:ch"
    master = redis_cluster.master_for_key(key)
    replica = redis_cluster.replica_of(master.port)
    await client.set(key, "kept")
    # Replication is asynchronous: make sure the replica has the key before the kill.
    assert redis_cluster.call(master.port, "WAIT", 1, 2000) == "1"
    subscriber = connect(redis_cluster)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.ssubscribe(channel)
        assert [m["type"] for m in await sharded(pubsub, 1)] == ["ssubscribe"]

        redis_cluster.kill(master.port)
        began = time.monotonic()
        await asyncio.to_thread(redis_cluster.wait_ok, 15)
        assert time.monotonic() - began < 15
        assert redis_cluster.master_for_key(key).port == replica.port
        assert master.port not in redis_cluster.live_ports

        assert await client.get(key) == "kept"
        await client.set(key, "after the kill")
        assert client.get_node_from_key(key).port == replica.port

        # The subscriber's poll on the dead node fails; redis-py refreshes the
        # topology and subscribes again on the new master by itself. What is
        # published before that is lost (Pub/Sub keeps nothing): publish until
        # one arrives.
        deadline = time.monotonic() + 15
        received: list[tuple[str, str]] = []
        while not received and time.monotonic() < deadline:
            await client.spublish(channel, "after the kill")
            try:
                received = data(await sharded(pubsub, 1, wait=0.3))
            except redis.ConnectionError:
                # Every node this pubsub polls is down (here its only one): redis-py
                # raises, having scheduled the refresh that repairs it.
                continue
        assert received == [(channel, "after the kill")]
    finally:
        await pubsub.aclose()
        await subscriber.aclose()
        await asyncio.to_thread(redis_cluster.revive, master.port)
    assert redis_cluster.role(master.port) == "slave"
    assert redis_cluster.replica_of(replica.port).port == master.port
