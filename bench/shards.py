"""Redis Cluster with 1 vs 3 shards: publish throughput and delivery (issue 22).

What it answers: does adding Redis Cluster masters (sharded Pub/Sub, ``SPUBLISH``
to the master of the channel's slot) raise what the whole system publishes and
delivers on this machine, and which part is bound by its cores. Each
configuration gets fresh processes:

- Redis: a Redis Cluster of 1 or 3 masters without replicas, started from the
  installed binaries by ``tests/redis_cluster.py``'s ``RedisCluster`` (a 1-master
  cluster is made with ``CLUSTER ADDSLOTSRANGE``: ``redis-cli --cluster create``
  wants 3 masters), or ``plain``: one ``redis-server`` on a ``redis://`` URL (classic
  Pub/Sub), as a reference.
- two server processes (``python -m api serve``, ``bench/servers.py``'s
  ``Server``) on one fresh PostgreSQL database (created, migrated and seeded by the
  first, dropped after) and that Redis, with the same key prefix, both pinned to
  core 0 by default like every server in bench/ (``--server-cpus``);
- subscribers (``bench/subscribers.py`` or the Node shard, one shard process per
  channel and server, pinned to the last core with the driver) on channels of the
  seeded demo directory chosen so their slots spread evenly over the 3 masters:
  ``--per-master`` channels per master of the 3-master layout, the same channels
  in every configuration (with 1 master they all live on it). ``CLUSTER KEYSLOT``
  on the running cluster says where each channel landed;
- publishers (``bench/publisher.py``, the ``publishAnnouncement`` mutation with the
  institution admin's token): one keep-alive connection per channel and server,
  closed loop, at saturation for ``--seconds``, bounded by ``--max-publishes`` and
  by a window of undelivered messages per subscriber (``--window``).

Measured over the publishing window: publishes/s acknowledged, deliveries/s,
delivery latency p50/p95/p99 (receipt at a subscriber − publish start), CPU of
each Redis node (``INFO cpu`` used_cpu_sys + used_cpu_user, after − before), of
each server process tree, of all ``postgres`` processes on the machine, of the
client (driver + shards), and of the whole machine (busy % out of nproc × 100).
Every subscriber checks every message: a lost, duplicated or reordered message,
an offset gap or a subscriber closed by the server is a correctness failure
(exit 1).

    .venv/bin/python bench/shards.py                          # 1,3,1,3: ~4 min
    .venv/bin/python bench/shards.py --configs plain 1 3 1 3 plain
    .venv/bin/python bench/shards.py --quick                  # smoke: 1 and 3, short

Configurations alternate in the order given (the machine is noisy); each row's
ratio is to the nearest 1-shard run (the one before it, else the one after).
Results: ``bench/results/<date>-<HHMM>-redis-shards.json`` (``…-quick.json`` for
``--quick``; never over an earlier run's) and a markdown table on stdout.
Loopback only; processes are stopped by PID; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import psutil  # noqa: E402
import redis  # noqa: E402
from demo import token  # noqa: E402
from fanout import choose_client, machine, redact_arg  # noqa: E402
from publisher import Publisher, PublishStats  # noqa: E402
from redis.crc import key_slot as redis_key_slot  # noqa: E402
from report import PROBLEM_KEYS, merge_reports, percentile  # noqa: E402
from scenarios import ClientCpu  # noqa: E402
from servers import Sampler, Server, ShardProcess, redact  # noqa: E402

from db.seed import DEMO  # noqa: E402
from tests.redis_cluster import (  # noqa: E402
    HOST,
    SLOTS,
    RedisCluster,
    cluster_binaries,
    cluster_ports,
)
from tests.services import RedisProcess  # noqa: E402

PREFIX = "benchshards"  # both servers' EDUMATRIX_REDIS_PREFIX: they share every channel
PHASE = "shards"
CLUSTER_SHARDS = 3  # the layout channels are chosen for
# Which demo channels to prefer, in order: a user channel's publish costs the server
# one more query (the user's institution), so those come last.
KIND_ORDER = ("classroom", "department", "institution", "alerts", "role", "user")


# -- channels ---------------------------------------------------------------------------


def pubsub_key(channel: str) -> str:
    """The sharded Pub/Sub channel a channel is published on (streams/redis_sharded.py)."""
    return f"{PREFIX}:ch:{{{channel}}}"


def key_slot(channel: str) -> int:
    """The slot of a channel's Pub/Sub channel and history keys: the hash tag is the
    channel name itself (redis-py's CRC16, as a cluster client computes it)."""
    return int(redis_key_slot(pubsub_key(channel).encode()))


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The slot range of each master as ``redis-cli --cluster create`` assigns them."""
    per_node = SLOTS / masters
    ranges, first, cursor = [], 0, 0.0
    for i in range(masters):
        last = int(cursor + per_node - 1 + 0.5)
        if last > SLOTS - 1 or i == masters - 1:
            last = SLOTS - 1
        ranges.append((first, last))
        first, cursor = last + 1, cursor + per_node
    return ranges


@dataclass(frozen=True)
class BenchChannel:
    name: str
    kind: str
    publisher: str  # demo user whose token publishes
    subscriber: str  # demo user whose token subscribes
    slot: int


def demo_channels() -> list[BenchChannel]:
    """Every channel of the seeded demo directory that a demo user may publish to and
    another may subscribe to: the institution's admin publishes everywhere in the
    institution (and to its users' channels) and subscribes to all but user channels,
    which only their user may subscribe to."""
    found: list[BenchChannel] = []
    for inst in DEMO:
        admin = next(u.id for u in inst.users if u.role == "admin")
        base = f"institution:{inst.id}"
        named = [(f"{base}:classroom:{c}", "classroom") for c in inst.classrooms]
        named += [(f"{base}:department:{d}", "department") for d in inst.departments]
        named += [(base, "institution"), (f"{base}:alerts", "alerts")]
        named += [(f"{base}:role:{r}", "role") for r in ("admin", "teacher", "student")]
        for name, kind in named:
            found.append(BenchChannel(name, kind, admin, admin, key_slot(name)))
        for user in inst.users:
            name = f"user:{user.id}"
            found.append(BenchChannel(name, "user", admin, user.id, key_slot(name)))
    return sorted(found, key=lambda c: (KIND_ORDER.index(c.kind), c.name))


def choose_channels(per_master: int) -> tuple[list[BenchChannel], list[str]]:
    """``per_master`` demo channels on each master of the 3-master layout (all demo
    channels with 0), and notes on what could not be spread evenly."""
    channels = demo_channels()
    ranges = slot_ranges(CLUSTER_SHARDS)
    by_master = [[c for c in channels if lo <= c.slot <= hi] for lo, hi in ranges]
    notes = []
    if per_master <= 0:
        counts = ", ".join(str(len(group)) for group in by_master)
        notes.append(f"all {len(channels)} demo channels: {counts} per master")
        return channels, notes
    chosen: list[BenchChannel] = []
    for i, group in enumerate(by_master):
        if len(group) < per_master:
            notes.append(f"master {i} has only {len(group)} demo channels, not {per_master}")
        chosen += group[:per_master]
    return chosen, notes


# -- Redis ------------------------------------------------------------------------------


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Set the affinity of every thread of ``pid`` (redis-server starts its background
    threads before we could pin it, and children inherit the driver's core)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that ended meanwhile


def node_stats(port: int) -> dict[str, float]:
    """CPU seconds (``INFO cpu``: used_cpu_sys + used_cpu_user) and commands processed."""
    with redis.Redis(host=HOST, port=port, socket_timeout=5, decode_responses=True) as client:
        cpu = client.info("cpu")
        stats = client.info("stats")
    return {
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "commands": float(stats["total_commands_processed"]),
    }


@dataclass
class BenchCluster(RedisCluster):
    """``RedisCluster`` that can also be 1 or 2 masters without replicas: the slots are
    assigned with ``CLUSTER ADDSLOTSRANGE`` as ``redis-cli --cluster create`` would,
    since that refuses fewer than 3 masters."""

    def start(self, timeout: float = 60.0) -> RedisCluster:
        if self.masters_count >= 3:
            return super().start(timeout)
        if self.replicas_per_master:
            raise ValueError("fewer than 3 masters: without replicas only")
        began = time.monotonic()
        server, _ = cluster_binaries()
        self.ports = cluster_ports(self.masters_count)
        try:
            for port in self.ports:
                self._spawn(server, port)
            for port in self.ports:
                self._wait_answers(port, timeout=15)
            for port, (lo, hi) in zip(self.ports, slot_ranges(self.masters_count), strict=True):
                self.call(port, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
            for port in self.ports[1:]:
                self.call(self.ports[0], "CLUSTER", "MEET", HOST, port)
            self.wait_ok(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self


class Redises:
    """What a configuration runs on: a cluster of N masters, or ``plain``."""

    def __init__(self, config: str) -> None:
        self.config = config
        self.cluster: BenchCluster | None = None
        self.plain: RedisProcess | None = None

    @property
    def label(self) -> str:
        if self.config == "plain":
            return "plain Redis (redis://, PUBLISH)"
        masters = int(self.config)
        return f"cluster, {masters} master{'s' if masters > 1 else ''} (SPUBLISH)"

    def start(self, cpus: set[int]) -> None:
        if self.config == "plain":
            self.plain = RedisProcess().start()
        else:
            self.cluster = BenchCluster(masters_count=int(self.config), replicas_per_master=0)
            self.cluster.start()
        for pid in self.pids:
            pin_threads(pid, cpus)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.plain is not None:
            self.plain.stop()

    @property
    def url(self) -> str:
        if self.plain is not None:
            return f"redis://{HOST}:{self.plain.port}/0"
        assert self.cluster is not None
        return self.cluster.cluster_url

    @property
    def ports(self) -> list[int]:
        if self.plain is not None:
            return [self.plain.port]
        assert self.cluster is not None
        return list(self.cluster.ports)

    @property
    def pids(self) -> list[int]:
        if self.plain is not None:
            assert self.plain.process is not None
            return [self.plain.process.pid]
        assert self.cluster is not None
        return [p.pid for p in self.cluster.processes.values()]

    def placement(self, channels: list[BenchChannel]) -> dict[str, dict[str, int]]:
        """Where each channel lives: ``CLUSTER KEYSLOT`` of its Pub/Sub channel on the
        running cluster, the port of the master serving that slot, and that master's
        number (0 = the master of slot 0, and so on up the slots)."""
        if self.cluster is None:
            return {c.name: {"slot": c.slot, "port": self.ports[0], "master": 0} for c in channels}
        masters = sorted(self.cluster.masters(), key=lambda node: node.slots[0][0])
        found = {}
        for channel in channels:
            slot = self.cluster.keyslot(pubsub_key(channel.name))
            if slot != channel.slot:
                raise RuntimeError(
                    f"{channel.name}: CLUSTER KEYSLOT {slot}, computed {channel.slot}"
                )
            index = next(i for i, node in enumerate(masters) if node.serves(slot))
            found[channel.name] = {"slot": slot, "port": masters[index].port, "master": index}
        return found

    def stats(self) -> dict[int, dict[str, float]]:
        return {port: node_stats(port) for port in self.ports}


# -- CPU outside our process trees ------------------------------------------------------


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every ``postgres`` process on the machine, by PID (read only)."""
    found = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "postgres":
            try:
                times = proc.cpu_times()
                found[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
    return found


def busy_cpu_s() -> float:
    """Seconds all cores spent on anything but idle and I/O wait, machine-wide."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


# -- one configuration --------------------------------------------------------------------


@dataclass
class PinnedServer(Server):
    """A server pinned to ``pin`` (``taskset -c`` list) rather than to core 0."""

    pin: str = "0"

    @property
    def cpus(self) -> str:
        return self.pin


def start_servers(redis_url: str, args: argparse.Namespace) -> list[PinnedServer]:
    """Two server processes on one fresh database: the first creates, migrates and
    seeds it (and drops it when stopped); the second migrates and seeds it again,
    which changes nothing, and shares it."""
    env = {"EDUMATRIX_REDIS_PREFIX": PREFIX}
    pins = args.server_cpus.split("/") * 2
    first = PinnedServer(
        "ours", redis_url=redis_url, database_url=args.database_url, extra_env=env, pin=pins[0]
    )
    first.start()
    servers = [first]
    try:
        shared = {**env, "EDUMATRIX_DATABASE_URL": first._server_database_url()}
        second = PinnedServer("ours", redis_url=redis_url, extra_env=shared, pin=pins[1])
        second.start()
        servers.append(second)
    except BaseException:
        first.stop()
        raise
    return servers


class Measurement:
    """Subscribers on every (server, channel), publishers on every (server, channel)."""

    def __init__(
        self, servers: list[PinnedServer], channels: list[BenchChannel], args: argparse.Namespace
    ) -> None:
        self.servers = servers
        self.channels = channels
        self.args = args
        self.shards: dict[tuple[int, str], ShardProcess] = {}
        self.connected: dict[tuple[int, str], int] = {}
        self.publishers: dict[tuple[int, str], Publisher] = {}
        self.stats: dict[tuple[int, str], PublishStats] = {}

    def received(self) -> int:
        return sum(s.progress["received"] for s in self.shards.values())

    def subs_of(self, channel: str) -> int:
        return sum(n for (_, name), n in self.connected.items() if name == channel)

    def expected(self, attempted: bool = False) -> int:
        """Deliveries owed: each acknowledged (or attempted) publish × its channel's subs."""
        total = 0
        for (_, name), stats in self.stats.items():
            count = stats.attempted if attempted else len(stats.acked)
            total += count * self.subs_of(name)
        return total

    async def subscribe(self, placement: dict[str, dict[str, int]]) -> None:
        """Subscribers on every (server, channel), all at once (a herd of first
        SSUBSCRIBEs per shard: what found the race fixed in streams/redis_sharded.py),
        live before this returns."""
        for i, server in enumerate(self.servers):
            for channel in self.channels:
                self.publishers[(i, channel.name)] = Publisher(
                    "127.0.0.1", server.port, token(channel.publisher), channel.name, 1
                )
        await self._start_shards(list(self.channels))
        await self.until_live()

    async def _start_shards(self, channels: list[BenchChannel]) -> None:
        args = self.args
        starts = {}
        for i, server in enumerate(self.servers):
            url = f"ws://127.0.0.1:{server.port}/graphql"
            for channel in channels:
                tok = token(channel.subscriber)
                starts[(i, channel.name)] = ShardProcess.start(
                    url, tok, channel.name, args.subs, args.client_cpu, args.client
                )
        keys = list(starts)
        shards = await asyncio.gather(*starts.values())
        self.shards.update(zip(keys, shards, strict=True))
        ready = await asyncio.gather(*(s.expect("ready", 120) for s in shards))
        self.connected.update({k: r["connected"] for k, r in zip(keys, ready, strict=True)})
        missing = sum(args.subs - self.connected[k] for k in keys)
        if missing:
            errors = [e for s in shards for e in s.connect_errors][:3]
            raise RuntimeError(f"{missing} subscribers could not connect: {errors}")

    async def until_live(self, limit_s: float = 30.0) -> None:
        """Publish a probe on every subscribed channel, from each server in turn, until
        every subscriber got one; raise naming the channels that never delivered."""
        want = sum(self.connected.values())
        subscribed = {name for _, name in self.shards}
        probe = PublishStats()
        deadline = time.monotonic() + limit_s
        for seq in itertools.count():
            live = sum(s.progress["live"] for s in self.shards.values())
            if live >= want:
                return
            if time.monotonic() > deadline:
                dead = sorted(
                    f"server {i}: {name}"
                    for (i, name), shard in self.shards.items()
                    if shard.progress["live"] < self.connected[(i, name)]
                )
                raise TimeoutError(
                    f"only {live} of {want} subscribers live after {limit_s}s; "
                    f"not live: {', '.join(dead)}; failed probes: {probe.errors}"
                )
            probes = [
                p for (i, n), p in self.publishers.items() if i == seq % 2 and n in subscribed
            ]
            await asyncio.gather(*(p.publish("warm", seq, probe) for p in probes))
            await asyncio.sleep(0.3)

    async def flood(self) -> PublishStats:
        """Every (server, channel) publisher in a closed loop, until ``--seconds`` or
        ``--max-publishes``; the two servers of a channel share its seq numbers."""
        args = self.args
        per_channel = max(1, args.max_publishes // len(self.channels))
        seqs = {c.name: iter(range(per_channel)) for c in self.channels}
        subs_total = sum(self.connected.values())
        started = time.monotonic()
        deadline = started + args.seconds
        self.stats = {key: PublishStats(started=started) for key in self.publishers}

        async def gate() -> None:
            # At most --window messages per subscriber in flight, so a backlog cannot
            # grow without bound; progress arrives every 0.1 s, so poll, 10 s at most.
            for _ in range(2000):
                if self.expected() - self.received() <= args.window * subs_total:
                    return
                await asyncio.sleep(0.005)

        async def worker(key: tuple[int, str]) -> None:
            publisher, stats = self.publishers[key], self.stats[key]
            for seq in seqs[key[1]]:
                if time.monotonic() >= deadline:
                    break
                await gate()
                if time.monotonic() >= deadline:
                    break
                await publisher.publish(PHASE, seq, stats)
            stats.ended = time.monotonic()

        await asyncio.gather(*(worker(key) for key in self.publishers))
        merged = PublishStats(started=started, ended=time.monotonic())
        for stats in self.stats.values():
            merged.acked += stats.acked
            merged.failed += stats.failed
            merged.request_ms += stats.request_ms
            merged.first_error = merged.first_error or stats.first_error
            for error, count in stats.errors.items():
                merged.errors[error] = merged.errors.get(error, 0) + count
        return merged

    async def drain(self, limit_s: float = 20.0) -> float:
        """Until every attempted publish reached every subscriber, 3 s without progress,
        or ``limit_s``; what has not arrived then is reported as lost."""
        t0 = time.monotonic()
        target = self.expected(attempted=True)
        last, last_change = -1, t0
        while time.monotonic() - t0 < limit_s:
            got = self.received()
            if got >= target:
                break
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 3:
                break
            await asyncio.sleep(0.05)
        return round(time.monotonic() - t0, 2)

    async def run(self, redises: Redises, placement: dict[str, dict[str, int]]) -> dict[str, Any]:
        await self.subscribe(placement)
        await asyncio.sleep(1.0)
        for shard in self.shards.values():
            await shard.send({"cmd": "phase", "name": PHASE})
        await asyncio.gather(*(s.expect("phase", 30) for s in self.shards.values()))

        samplers = [Sampler(server) for server in self.servers]
        client = ClientCpu(list(self.shards.values()))
        redis0 = await asyncio.to_thread(redises.stats)
        pg0, busy0 = postgres_cpu(), busy_cpu_s()
        for sampler in samplers:
            sampler.start()
        t0 = time.monotonic()
        stats = await self.flood()
        wall = time.monotonic() - t0
        server_usage = [sampler.stop() for sampler in samplers]
        busy = busy_cpu_s() - busy0
        pg1 = postgres_cpu()
        redis1 = await asyncio.to_thread(redises.stats)
        client_cpu = client.percent()
        drained = await self.drain()

        reports = []
        for (_, name), shard in self.shards.items():
            acked = [s for (_, n), st in self.stats.items() if n == name for s in st.acked]
            await shard.send({"cmd": "report", "acked": acked})
        reports = await asyncio.gather(*(s.expect("report", 120) for s in self.shards.values()))
        result = merge_reports(list(reports), stats)
        latencies = sorted(x for r in reports for x in r["latencies_ms"])
        result["latency_ms"]["p95"] = percentile(latencies, 0.95)
        result["publishes_per_s"] = round(len(stats.acked) / wall, 1)
        result["drain_s"] = drained
        result["window_s"] = round(wall, 2)
        result["per_server_published"] = [
            sum(len(st.acked) for (i, _), st in self.stats.items() if i == k)
            for k in range(len(self.servers))
        ]
        result["per_channel_published"] = {
            c.name: sum(len(st.acked) for (_, n), st in self.stats.items() if n == c.name)
            for c in self.channels
        }
        result["cpu_percent"] = cpu = {
            "servers": [u["cpu_percent"] for u in server_usage],
            "redis": {
                str(port): round(100 * (redis1[port]["cpu_s"] - redis0[port]["cpu_s"]) / wall, 1)
                for port in redis1
            },
            "postgres": round(100 * sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items()) / wall, 1),
            "client": client_cpu,
            "machine_busy": round(100 * busy / wall, 1),
        }
        ours = sum(cpu["servers"]) + sum(cpu["redis"].values()) + cpu["postgres"] + cpu["client"]
        cpu["other"] = round(cpu["machine_busy"] - ours, 1)
        result["redis_commands_per_s"] = {
            str(port): round((redis1[port]["commands"] - redis0[port]["commands"]) / wall, 1)
            for port in redis1
        }
        result["server_rss_mb"] = [u["rss_mb"] for u in server_usage]
        return result

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards.values()), return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self.publishers.values()))


async def measure(
    servers: list[PinnedServer],
    channels: list[BenchChannel],
    redises: Redises,
    placement: dict[str, dict[str, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    run = Measurement(servers, channels, args)
    try:
        return await run.run(redises, placement)
    finally:
        await run.close()


def run_config(
    config: str, channels: list[BenchChannel], args: argparse.Namespace
) -> dict[str, Any]:
    """One configuration from start to stop: Redis, two servers, subscribers, a flood."""
    redises = Redises(config)
    started = datetime.now(UTC)
    print(f"[shards] {started:%H:%M:%S} {redises.label}: starting", file=sys.stderr, flush=True)
    redises.start(args.redis_cpu_set)
    servers: list[PinnedServer] = []
    result: dict[str, Any] = {"config": config, "label": redises.label}
    placement: dict[str, dict[str, int]] = {}
    try:
        placement = redises.placement(channels)
        servers = start_servers(redises.url, args)
        result.update(asyncio.run(measure(servers, channels, redises, placement, args)))
    except Exception as exc:  # keep what the other configurations measure
        logs = "\n".join(s.log()[-1500:] for s in servers)
        print(f"[shards] {config} failed: {exc!r}\n{logs}", file=sys.stderr)
        result["error"] = repr(exc)
    finally:
        errors: dict[str, int] = {}
        for server in reversed(servers):  # the first one drops the shared database
            for line, count in server.log_errors().items():
                errors[line] = errors.get(line, 0) + count
            server.stop()
        redises.stop()
    result["placement"] = placement
    result["server_log_errors"] = errors
    result["started"] = started.isoformat(timespec="seconds")
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


# -- report -------------------------------------------------------------------------------


def problems(result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [f"run failed: {result['error']}"]
    found = [f"{result[key]} {key}" for key in (*PROBLEM_KEYS, "errors") if result[key]]
    if result["closed"]:
        found.append(f"subscribers closed by the server: {result['closed']}")
    if result["publish_failed"]:
        found.append(f"{result['publish_failed']} failed publishes {result['publish_errors']}")
    return found


def reference(runs: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """The 1-shard run nearest before ``index``, else the nearest after."""
    ok = [i for i, r in enumerate(runs) if r["config"] == "1" and "error" not in r]
    before = [i for i in ok if i <= index]
    after = [i for i in ok if i > index]
    if before:
        return runs[before[-1]]
    return runs[after[0]] if after else None


def ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}×" if value and ref else "–"


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| # | configuration | publishes/s | × 1 shard | deliveries/s | × 1 shard "
        "| latency p50 / p95 / p99 ms | Redis CPU % per node | server CPU % (A + B), per publish "
        "| Postgres CPU % | client CPU % | machine busy % (other) | lost / dup / reordered |",
        "|---:|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for i, run in enumerate(runs):
        if "error" in run:
            lines.append(f"| {i + 1} | {run['label']} | failed: {run['error'][:80]} |")
            continue
        ref = reference(runs, i)
        lat = run["latency_ms"]
        cpu = run["cpu_percent"]
        redis_cpu = " / ".join(f"{v:.0f}" for v in cpu["redis"].values())
        servers = " + ".join(f"{v:.0f}" for v in cpu["servers"])
        per_publish = sum(cpu["servers"]) / 100 / run["publishes_per_s"] * 1000
        check = f"{run['lost']} / {run['duplicated']} / {run['reordered']}"
        lines.append(
            f"| {i + 1} | {run['label']} | {run['publishes_per_s']:,.0f} "
            f"| {ratio(run['publishes_per_s'], ref and ref['publishes_per_s'])} "
            f"| {run['delivered_per_s'] or 0:,.0f} "
            f"| {ratio(run['delivered_per_s'], ref and ref['delivered_per_s'])} "
            f"| {lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} | {redis_cpu} "
            f"| {servers} = {sum(cpu['servers']):.0f} ({per_publish:.2f} ms/publish) "
            f"| {cpu['postgres']:.0f} "
            f"| {cpu['client']:.0f} | {cpu['machine_busy']:.0f} ({cpu['other']:.0f}) | {check} |"
        )
    return "\n".join(lines)


def summary(runs: list[dict[str, Any]]) -> str:
    """Median publishes/s and deliveries/s per configuration, and the median ratio of
    each run to its nearest 1-shard run."""
    out = []
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [(i, r) for i, r in enumerate(runs) if r["config"] == config and "error" not in r]
        if not mine:
            continue
        pubs = statistics.median(r["publishes_per_s"] for _, r in mine)
        dels = statistics.median(r["delivered_per_s"] or 0 for _, r in mine)
        text = f"{mine[0][1]['label']}: median {pubs:,.0f} publishes/s, {dels:,.0f} deliveries/s"
        pairs = [(r, reference(runs, i)) for i, r in mine if config != "1"]
        pub_ratios = [r["publishes_per_s"] / ref["publishes_per_s"] for r, ref in pairs if ref]
        if pub_ratios:
            text += f"; median {statistics.median(pub_ratios):.2f}× the nearest 1-shard run"
        out.append(f"- {text} ({len(mine)} runs)")
    return "\n".join(out)


def placement_table(runs: list[dict[str, Any]], channels: list[BenchChannel]) -> str:
    """Which master each channel landed on, in the first run of each cluster size."""
    firsts = {}
    for run in runs:
        if run["config"] != "plain" and run.get("placement"):
            firsts.setdefault(run["config"], run)
    head = " | ".join(f"{c} master{'s' if c != '1' else ''}" for c in firsts)
    lines = [f"| channel | slot | {head} |", "|---|---:|" + "---:|" * len(firsts)]
    for channel in channels:
        cells = " | ".join(str(r["placement"][channel.name]["master"]) for r in firsts.values())
        lines.append(f"| `{channel.name}` | {channel.slot} | {cells} |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="in order: a number of cluster masters (1, 2, 3, ...) or plain; default 1 3 1 3",
    )
    parser.add_argument("--seconds", type=float, default=None, help="publishing window (20)")
    parser.add_argument("--subs", type=int, default=None, help="subscribers per channel and server")
    parser.add_argument(
        "--per-master",
        type=int,
        default=None,
        help="demo channels per master of the 3-master layout (4); 0 = all demo channels",
    )
    parser.add_argument("--window", type=int, default=50, help="messages in flight per subscriber")
    parser.add_argument("--max-publishes", type=int, default=300_000, help="bound per run")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server (a fresh database per configuration, dropped after)",
    )
    parser.add_argument(
        "--server-cpus",
        default="0",
        help="taskset -c list for server A, or A/B for each (default: both on core 0)",
    )
    parser.add_argument("--redis-cpus", default="all", help="cores for Redis nodes: all or 0,1...")
    parser.add_argument("--client", choices=["node", "python"], help="subscriber shards")
    parser.add_argument("--quick", action="store_true", help="smoke: 1 and 3, 3 s, 1 channel each")
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON (default bench/results/<date>-<HHMM>-redis-shards[-quick].json)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.configs = args.configs or (["1", "3"] if quick else ["1", "3", "1", "3"])
    for config in args.configs:
        if config != "plain" and not (config.isdigit() and int(config) >= 1):
            parser.error(f"--configs: {config!r} is neither a number of masters nor plain")
    args.seconds = args.seconds or (3.0 if quick else 20.0)
    args.subs = args.subs or (2 if quick else 5)
    args.per_master = args.per_master if args.per_master is not None else (1 if quick else 4)
    ncpu = os.cpu_count() or 2
    args.redis_cpu_set = (
        set(range(ncpu))
        if args.redis_cpus == "all"
        else {int(c) for c in args.redis_cpus.split(",")}
    )
    args.client_cpu = ncpu - 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.client, versions = choose_client(args.client)
    channels, notes = choose_channels(args.per_master)
    for note in notes:
        print(f"[shards] {note}", file=sys.stderr)
    os.sched_setaffinity(0, {args.client_cpu})  # shards pin themselves too (Node via taskset)
    print(f"[shards] {len(channels)} channels × 2 servers × {args.subs} subscribers; "
          f"configurations {' '.join(args.configs)}", file=sys.stderr)  # fmt: skip
    started = datetime.now(UTC)
    load_before = machine()["loadavg_1m"]
    runs = [run_config(config, channels, args) for config in args.configs]

    given = argv if argv is not None else sys.argv[1:]
    command = ("python bench/shards.py " + " ".join(redact_arg(a) for a in given)).strip()
    kind = "redis-shards-quick" if args.quick else "redis-shards"
    out = args.out or BENCH / "results" / f"{started:%Y-%m-%d-%H%M}-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": {**machine(), "loadavg_1m_before": load_before},
        "plan": {
            "configs": args.configs,
            "seconds": args.seconds,
            "subs_per_channel_and_server": args.subs,
            "window": args.window,
            "server_cpus": args.server_cpus,
            "redis_cpus": sorted(args.redis_cpu_set),
            "client_cpu": args.client_cpu,
            "database_url": redact(args.database_url),
            "channels": [vars(c) for c in channels],
            "channel_notes": notes,
        },
        "client": {"kind": args.client, "versions": versions},
        "runs": runs,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")

    info = machine()
    print(f"\n{started:%Y-%m-%d %H:%M} UTC · {command} · {info['cpu']}, nproc {info['nproc']}, "
          f"load {load_before} → {info['loadavg_1m']} · {len(channels)} channels × 2 servers × "
          f"{args.subs} subs, {args.client} client · results in {out}\n")  # fmt: skip
    print(markdown(runs))
    print()
    print(summary(runs))
    print()
    print(placement_table(runs, channels))
    failed = False
    for i, run in enumerate(runs):
        for line in problems(run):
            failed = True
            print(f"[shards] run {i + 1} ({run['label']}): {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
