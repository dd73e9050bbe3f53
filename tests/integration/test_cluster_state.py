"""The state the processes share besides the bus, on a real Redis Cluster (3 masters +
replicas, tests/redis_cluster.py): delivery numbers and presence history
(``{metrics}``), Pusher occupancy (``{pusher}``) and the admission rates. Each test
is the single-Redis behaviour (tests/unit/test_delivery_stats.py,
tests/integration/test_live_stats.py, test_pusher_webhooks.py, test_admission.py)
with two stores, occupancies or limiters standing for two processes; what they write
is looked up on the master that owns its slot, asked directly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest

from api.admission import Admission, parse_rate
from api.metrics import Metrics
from api.settings import Settings
from schema.errors import RateLimited
from streams.acl import Role, Viewer
from streams.delivery_stats import empty_row
from streams.delivery_stats_redis import RedisDeliveryStore
from streams.presence_history_redis import RedisPresenceHistory
from streams.pusher_occupancy import OCCUPIED, UNAVAILABLE, VACATED, RedisOccupancy
from streams.redis_client import AnyRedis, every, resilient_client
from tests.redis_cluster import RedisCluster
from tests.server import SECRET

Seen = list[tuple[str, str, str]]


def cluster_url(cluster: RedisCluster, ports: list[int] | None = None) -> str:
    """What ``EDUMATRIX_REDIS_URL`` takes: the given nodes, or every live one."""
    nodes = [(h, p) for h, p in cluster.startup_nodes if ports is None or p in ports]
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in nodes)


def elsewhere(cluster: RedisCluster, key: str) -> str:
    """A URL naming only a master that does not own ``key``: the client must find the
    owner itself."""
    owner = cluster.master_for_key(key).port
    return cluster_url(cluster, [next(m.port for m in cluster.masters() if m.port != owner)])


def stored_on_owner(cluster: RedisCluster, key: str) -> bool:
    """``key`` exists on the master of its slot (a plain connection to that node)."""
    return cluster.call(cluster.master_for_key(key).port, "EXISTS", key) == "1"


# -- delivery numbers --------------------------------------------------------------


async def test_two_processes_delivery_numbers_sum_exactly(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    url = elsewhere(redis_cluster, "{metrics}")
    a = RedisDeliveryStore(url, prefix=redis_prefix)
    b = RedisDeliveryStore(cluster_url(redis_cluster), prefix=redis_prefix)
    await a.start()
    await b.start()
    try:
        now = time.time()
        minute = int(now // 60)
        row = empty_row()
        row[0], row[1 + 2] = 1, 1  # one delivery in (2.5, 5] ms
        slow = empty_row()
        slow[0], slow[1 + 5] = 2, 2  # two in a slower bucket

        async def flushes(store: RedisDeliveryStore, process: str, n: int) -> None:
            for i in range(n):
                rows = {minute: row, minute - 1: slow}
                await store.add(process, now, rows, minute if i == 0 else None)

        await asyncio.gather(flushes(a, "a", 40), flushes(b, "b", 25))
        for store in (a, b):
            readout = await store.read(now, 2, 60.0)
            assert readout.processes == 2
            assert readout.minutes[minute].processes == 2  # once per process, not per flush
            assert readout.minutes[minute].delivered == 65
            assert readout.minutes[minute].buckets[2] == 65
            assert readout.minutes[minute - 1].delivered == 2 * 65
            assert readout.window(2).delivered == 3 * 65
        # The single-Redis key names, in the {metrics} slot on the master that owns it.
        assert a.minute_key(minute) == f"{redis_prefix}:{{metrics}}:d:{minute}"
        assert a.processes_key == f"{redis_prefix}:{{metrics}}:procs"
        for key in (a.minute_key(minute), a.minute_key(minute - 1), a.processes_key):
            assert stored_on_owner(redis_cluster, key)
    finally:
        await a.close()
        await b.close()


# -- presence history --------------------------------------------------------------


async def test_two_processes_leave_one_presence_sample_per_slot(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    a = RedisPresenceHistory(
        elsewhere(redis_cluster, "{metrics}"), prefix=redis_prefix, interval=60
    )
    b = RedisPresenceHistory(cluster_url(redis_cluster), prefix=redis_prefix, interval=60)
    await a.start()
    await b.start()
    try:
        channel = "institution:northwood"
        for slot in range(100, 110):
            written = await asyncio.gather(
                a.write(slot, {channel: slot, "online@northwood": 2}, "a"),
                b.write(slot, {channel: 1000 + slot}, "b"),
            )
            assert sorted(written) == [False, True]  # exactly one sample stays
            assert await a.taken(slot) and await b.taken(slot)
        assert await a.write(100, {channel: 1}, "a") is False
        assert await a.write(110, {}, "a")  # a sample with nobody online
        series = await b.read(channel, 99, 111)
        assert sorted(series) == list(range(100, 111))  # 99 and 111: no sample
        assert series[110] == 0
        for slot in range(100, 110):
            assert series[slot] in (slot, 1000 + slot)  # whole samples, never mixed
        assert await a.read(channel, 99, 111) == series
        key = a.slot_key(100)
        assert key == f"{redis_prefix}:{{metrics}}:p:100"
        assert stored_on_owner(redis_cluster, key)
        ttl = int(redis_cluster.call(redis_cluster.master_for_key(key).port, "TTL", key))
        assert 0 < ttl <= a.ttl_seconds
    finally:
        await a.close()
        await b.close()


# -- Pusher occupancy --------------------------------------------------------------


@pytest.fixture
async def clients(redis_cluster: RedisCluster) -> AsyncIterator[list[AnyRedis]]:
    """Three processes' clients: one started from a master that does not own
    ``{pusher}``, two from every node."""
    made = [
        resilient_client(elsewhere(redis_cluster, "{pusher}"), decode_responses=False),
        resilient_client(cluster_url(redis_cluster), decode_responses=False),
        resilient_client(cluster_url(redis_cluster), decode_responses=False),
    ]
    yield made
    for client in made:
        await client.aclose()


def occupancy(client: AnyRedis, prefix: str, seen: Seen, timeout: float = 30.0) -> RedisOccupancy:
    return RedisOccupancy(
        client,
        prefix=prefix,
        timeout_seconds=timeout,
        on_change=lambda app, name, event: seen.append((app, name, event)),
    )


async def test_occupied_once_and_vacated_once_across_processes(
    redis_cluster: RedisCluster, clients: list[AnyRedis], redis_prefix: str
) -> None:
    seen_a: Seen = []
    seen_b: Seen = []
    a = occupancy(clients[0], redis_prefix, seen_a)
    b = occupancy(clients[1], redis_prefix, seen_b)
    await asyncio.gather(a.add("1", "private-a"), b.add("1", "private-a"))
    await a.add("1", "private-a")
    await b.add("2", "presence-b")
    assert sorted(seen_a + seen_b) == [("1", "private-a", OCCUPIED), ("2", "presence-b", OCCUPIED)]
    assert await a.channels("1") == await b.channels("1") == {"private-a": 3}
    assert await a.channels("2") == {"presence-b": 1}
    # The single-Redis key names, in the {pusher} slot on the master that owns it.
    keys = a._keys("1", "private-a")
    assert keys[0] == f"{redis_prefix}:{{pusher}}:occ:1:private-a"
    assert all(stored_on_owner(redis_cluster, key) for key in keys)
    # A master without the script (restarted, promoted) answers NOSCRIPT to a
    # pipeline; the refresh loads it and goes on, reporting nothing new.
    redis_cluster.call(redis_cluster.master_for_key("{pusher}").port, "SCRIPT", "FLUSH")
    await a._refresh()
    await b._refresh()
    await a.remove("1", "private-a")
    await asyncio.gather(a.remove("1", "private-a"), b.remove("1", "private-a"))
    await b.remove("2", "presence-b")
    events = sorted(seen_a + seen_b)
    assert events.count(("1", "private-a", VACATED)) == 1
    assert events.count(("2", "presence-b", VACATED)) == 1
    assert len(events) == 4
    assert await a.channels("1") == {} and await b.channels("2") == {}
    assert not any(stored_on_owner(redis_cluster, key) for key in keys)
    # A presence event is reported by exactly one process.
    claimed = await asyncio.gather(a.claim_event("member_added:x"), b.claim_event("member_added:x"))
    assert sorted(claimed) == [False, True]
    await a.close()
    await b.close()


async def test_a_dead_process_channels_are_reaped_once(
    redis_cluster: RedisCluster, clients: list[AnyRedis], redis_prefix: str
) -> None:
    seen_dead: Seen = []
    seen_a: Seen = []
    seen_b: Seen = []
    dead = occupancy(clients[2], redis_prefix, seen_dead, timeout=0.3)
    for n in range(3):
        await dead.add("1", f"private-{n}")
    await dead.add("2", "private-x")
    a = occupancy(clients[0], redis_prefix, seen_a)
    b = occupancy(clients[1], redis_prefix, seen_b)
    await a.add("1", "private-0")  # still held by a live process
    await asyncio.sleep(0.4)  # the dead process's claims expire; it never refreshes
    # A process that never claimed a channel reaps: the only SCAN is on {pusher}'s master.
    redis_cluster.call(redis_cluster.master_for_key("{pusher}").port, "SCRIPT", "FLUSH")
    await b._reap()
    await a._reap()
    vacated = sorted(seen_a + seen_b)
    assert vacated == [
        ("1", "private-1", VACATED),
        ("1", "private-2", VACATED),
        ("2", "private-x", VACATED),
    ]
    assert seen_a == []  # the lock: one reaper per round, b's
    assert await a.channels("1") == {"private-0": 1}
    assert await a.channels("2") == {}
    await a.close()
    await b.close()


# -- admission ---------------------------------------------------------------------


def limit_key(prefix: str, user: str, rate: str) -> str:
    item = parse_rate(rate)
    assert item is not None
    return f"{prefix}:limits:{item.key_for(f'mutations:{user}')}"


def users_on_every_master(cluster: RedisCluster, prefix: str, rate: str) -> dict[int, str]:
    """A user per master port whose rate key that master owns."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < len(cluster.masters()):
        user = f"u{n}"
        found.setdefault(cluster.master_for_key(limit_key(prefix, user, rate)).port, user)
        n += 1
    return found


def admission(url: str, prefix: str, rate: str) -> Admission:
    settings = Settings(
        redis_url=url, redis_prefix=prefix, jwt_secret=SECRET, rate_limit_user_mutations=rate
    )
    return Admission(settings, Metrics())


async def admitted(limiter: Admission, user: str) -> bool:
    try:
        await limiter.admit_mutation(Viewer(user, Role.TEACHER, "inst"))
    except RateLimited:
        return False
    return True


def connected_clients(cluster: RedisCluster) -> int:
    """Connections to the masters (``CLIENT LIST`` in two words: the raw reply)."""
    return sum(len(cluster.call(m.port, "CLIENT", "LIST").splitlines()) for m in cluster.masters())


async def test_a_mutation_rate_counts_across_two_limiters_on_every_master(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    rate = "3/minute"
    users = users_on_every_master(redis_cluster, redis_prefix, rate)
    assert len(users) == 3
    before = connected_clients(redis_cluster)
    a = admission(cluster_url(redis_cluster), redis_prefix, rate)
    b = admission(elsewhere(redis_cluster, limit_key(redis_prefix, "u0", rate)), redis_prefix, rate)
    try:
        for port, user in users.items():
            assert [await admitted(x, user) for x in (a, b, a)] == [True] * 3
            assert await admitted(b, user) is False  # the fourth, by either process
            assert await admitted(a, user) is False
            key = limit_key(redis_prefix, user, rate)
            assert redis_cluster.call(port, "GET", key) == "5"  # on its own master
        assert await admitted(a, "someone-else")
        assert connected_clients(redis_cluster) > before
    finally:
        await a.close()
        await b.close()
    # close() closes the cluster client limits made (it has no close of its own).
    for _ in range(100):  # the server notices a closed connection soon, not at once
        if connected_clients(redis_cluster) <= before:
            break
        await asyncio.sleep(0.05)
    assert connected_clients(redis_cluster) <= before


async def test_a_hung_master_holds_a_check_one_timeout_then_it_admits(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    """As the pool does on one Redis: a master that stops answering (``CLIENT PAUSE``:
    no failover, it is alive) costs a check one socket timeout and the check admits,
    where redis-py's cluster default would retry until it answers (and refuse). The
    pause cannot be lifted early: it blocks ``CLIENT UNPAUSE`` too (Redis 7.0)."""
    rate = "1/minute"
    limiter = admission(cluster_url(redis_cluster), redis_prefix, rate)
    port = redis_cluster.master_for_key(limit_key(redis_prefix, "u1", rate)).port
    try:
        assert await admitted(limiter, "u1")
        assert await admitted(limiter, "u1") is False  # at the limit: a real check refuses
        paused = time.monotonic()
        redis_cluster.call(port, "CLIENT", "PAUSE", "2500", "ALL")
        assert await admitted(limiter, "u1")  # could not check: admitted
        assert time.monotonic() - paused < 2.0
        await asyncio.sleep(max(paused + 2.6 - time.monotonic(), 0))
        assert await admitted(limiter, "u1") is False  # answering again: refused again
    finally:
        await limiter.close()


@pytest.fixture
def unreachable() -> str:
    """A Redis Cluster URL whose only node refuses connections."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    return f"redis+cluster://127.0.0.1:{port}"


async def test_a_cluster_that_cannot_be_reached_admits(unreachable: str, redis_prefix: str) -> None:
    """As on one Redis (tests/unit/test_admission.py), though redis-py says so with a
    RedisClusterException, which is no RedisError."""
    limiter = admission(unreachable, redis_prefix, "1/minute")
    try:
        assert [await admitted(limiter, "u1") for _ in range(3)] == [True] * 3
    finally:
        await limiter.close()


async def test_the_reaper_outlives_a_cluster_that_cannot_be_reached(unreachable: str) -> None:
    client = resilient_client(unreachable, decode_responses=False)
    reaper = occupancy(client, "p", [])
    job = asyncio.create_task(every(0.02, reaper._reap, UNAVAILABLE))
    try:
        await asyncio.sleep(0.3)  # several rounds, each failing
        assert not job.done(), job.exception()
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        await client.aclose()
