"""A throwaway Redis Cluster (N masters, R replicas each) from the installed binaries,
in the style of tests/services.py: free loopback ports, a temporary directory, bounded
waits, processes stopped by PID, and a clear message saying what is missing.

Every node is a ``redis-server --cluster-enabled yes`` process; ``redis-cli --cluster
create`` assigns the slots and the replicas. Failure detection uses a small
``cluster-node-timeout`` so that :meth:`RedisCluster.kill` of a master leads to its
replica's promotion within a few seconds. Sharded Pub/Sub (``SSUBSCRIBE``,
``SPUBLISH``) needs Redis 7.0, so older binaries count as missing.

Tests share one cluster per session (the ``redis_cluster`` fixture). A test that
kills a node brings it back with :meth:`RedisCluster.revive` (it rejoins as a
replica) so the next test finds every shard with its replica again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.services import ServiceMissing, free_port

SLOTS = 16384
MIN_VERSION = (7, 0)  # SSUBSCRIBE / SPUBLISH
HOST = "127.0.0.1"
BUS_OFFSET = 10000  # the cluster bus listens on port + 10000


def _version(binary: str) -> tuple[int, int] | None:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"(?:v=|redis-cli )(\d+)\.(\d+)", out.stdout)
    return (int(found.group(1)), int(found.group(2))) if found else None


def cluster_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli``, new enough for sharded Pub/Sub, or
    :class:`ServiceMissing` saying which is missing or too old."""
    found: list[str] = []
    for name in ("redis-server", "redis-cli"):
        binary = shutil.which(name)
        if binary is None:
            raise ServiceMissing(
                f"{name} is not installed; a Redis Cluster needs redis-server and redis-cli "
                ">= 7.0 (Debian/Ubuntu: apt-get install redis-server redis-tools)"
            )
        version = _version(binary)
        if version is None or version < MIN_VERSION:
            shown = "unknown" if version is None else f"{version[0]}.{version[1]}"
            raise ServiceMissing(f"{binary} is version {shown}; sharded Pub/Sub needs Redis >= 7.0")
        found.append(binary)
    return found[0], found[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and below 65536."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        bus = port + BUS_OFFSET
        if bus > 65535 or port in ports or bus in ports or not _port_is_free(bus):
            continue
        if any(abs(port - p) == BUS_OFFSET for p in ports):
            continue
        ports.append(port)
    return ports


@dataclass(frozen=True)
class Node:
    """One line of ``CLUSTER NODES``, as seen by a live node."""

    id: str
    port: int
    role: str  # "master" or "replica"
    master_id: str | None  # the master a replica follows
    slots: tuple[tuple[int, int], ...]  # inclusive ranges, masters only
    flags: frozenset[str]

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})

    def serves(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


@dataclass(frozen=True)
class Replica:
    """A replica and the master it follows."""

    port: int
    id: str
    master_port: int
    master_id: str


def parse_nodes(text: str) -> list[Node]:
    nodes: list[Node] = []
    for line in text.strip().splitlines():
        parts = line.split()
        address, flags = parts[1], frozenset(parts[2].split(","))
        port = int(address.split("@", 1)[0].rsplit(":", 1)[1])
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # an importing/migrating slot, not owned
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        replica = "slave" in flags
        nodes.append(
            Node(
                id=parts[0],
                port=port,
                role="replica" if replica else "master",
                master_id=parts[3] if replica and parts[3] != "-" else None,
                slots=tuple(sorted(slots)),
                flags=flags,
            )
        )
    return nodes


def _info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass
class RedisCluster:
    """``masters_count`` masters with ``replicas_per_master`` replicas each, on loopback,
    owned by this run; :meth:`start` returns once the cluster is ok everywhere."""

    masters_count: int = 3
    replicas_per_master: int = 1
    node_timeout_ms: int = 1000
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emx-rcluster-")))
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_seconds: float = 0.0

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisCluster:
        began = time.monotonic()
        server, cli = cluster_binaries()
        self.ports = cluster_ports(self.masters_count * (1 + self.replicas_per_master))
        try:
            for port in self.ports:
                self._spawn(server, port)
            for port in self.ports:
                self._wait_answers(port, timeout=15)
            addresses = [f"{HOST}:{port}" for port in self.ports]
            create = [cli, "--cluster", "create", *addresses]
            create += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
            try:
                result = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise ServiceMissing(
                    f"redis-cli --cluster create did not finish in {timeout}s\n{self.logs()}"
                ) from exc
            if result.returncode != 0 or "[OK] All 16384 slots covered" not in result.stdout:
                raise ServiceMissing(
                    "redis-cli --cluster create failed "
                    f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.logs()}"
                )
            self.wait_ok(timeout=max(timeout - (time.monotonic() - began), 5.0))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _spawn(self, server: str, port: int) -> None:
        home = self.workdir / str(port)
        home.mkdir(exist_ok=True)
        args = [server, "--port", str(port), "--bind", HOST, "--protected-mode", "no"]
        args += ["--dir", str(home), "--daemonize", "no", "--save", "", "--appendonly", "no"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        # A replica may be promoted however long it was cut off from its master.
        args += ["--cluster-replica-validity-factor", "0"]
        # 7.0 waits 5 s by default before a diskless full sync, to batch replicas:
        # every replica's first sync (and a revived node's) would pay for it.
        args += ["--repl-diskless-sync-delay", "0"]
        with (home / "redis.log").open("ab") as log:
            self.processes[port] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        """Stop every node by its PID and remove the temporary directory."""
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self, port: int) -> None:
        """SIGKILL one node by its PID (no shutdown, no goodbye to the cluster)."""
        process = self.processes[port]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def revive(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again with its ``nodes.conf``: it rejoins, as a replica if
        its slots went to another node meanwhile. Waits until the cluster is whole."""
        if self.alive(port):
            return
        server, _ = cluster_binaries()
        self._spawn(server, port)
        self._wait_answers(port, timeout=15)
        self.wait_ok(timeout=timeout)

    def alive(self, port: int) -> bool:
        process = self.processes.get(port)
        return process is not None and process.poll() is None

    # -- addresses -----------------------------------------------------------------

    @property
    def live_ports(self) -> list[int]:
        return [port for port in self.ports if self.alive(port)]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, port) for port in self.live_ports]

    @property
    def urls(self) -> list[str]:
        return [f"redis://{HOST}:{port}" for port in self.live_ports]

    @property
    def cluster_url(self) -> str:
        """What ``EDUMATRIX_REDIS_URL`` takes for this cluster: every live node."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes)

    @property
    def url(self) -> str:
        """A master's URL; a cluster client discovers the rest from it."""
        return f"redis://{HOST}:{self.masters()[0].port}"

    # -- topology ------------------------------------------------------------------

    def _client(self, port: int, timeout: float) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),  # the waits below retry; one call fails fast
        )

    def call(self, port: int, *args: str | int, timeout: float = 2.0) -> str:
        """One command on one node, the reply as text. Send ``CLUSTER NODES`` as two
        arguments: redis-py then applies no reply parser of its own."""
        with self._client(port, timeout) as client:
            return str(client.execute_command(*args))

    def replication(self, port: int) -> dict[str, Any]:
        """``INFO replication`` of one node (``role`` is ``master`` or ``slave``)."""
        with self._client(port, 2.0) as client:
            info: dict[str, Any] = client.info("replication")
        return info

    def nodes(self, port: int | None = None) -> list[Node]:
        """``CLUSTER NODES`` as seen by ``port`` (default: the first live node)."""
        at = port if port is not None else self.live_ports[0]
        return parse_nodes(self.call(at, "CLUSTER", "NODES"))

    def masters(self) -> list[Node]:
        """Masters serving slots, by port."""
        found = [n for n in self.nodes() if n.role == "master" and n.slots and not n.failed]
        return sorted(found, key=lambda n: n.port)

    def replicas(self) -> list[Replica]:
        """Live replicas with the master each follows, by port."""
        nodes = self.nodes()
        by_id = {n.id: n for n in nodes}
        found = [
            Replica(
                port=n.port, id=n.id, master_port=by_id[n.master_id].port, master_id=n.master_id
            )
            for n in nodes
            if n.role == "replica" and n.master_id in by_id and not n.failed
        ]
        return sorted(found, key=lambda r: r.port)

    def replica_of(self, master_port: int) -> Replica:
        for replica in self.replicas():
            if replica.master_port == master_port:
                return replica
        raise LookupError(f"no live replica follows the master on port {master_port}")

    def keyslot(self, key: str) -> int:
        return int(self.call(self.live_ports[0], "CLUSTER", "KEYSLOT", key))

    def master_for_slot(self, slot: int) -> Node:
        for node in self.masters():
            if node.serves(slot):
                return node
        raise LookupError(f"no live master serves slot {slot}")

    def master_for_key(self, key: str) -> Node:
        """The master of ``key``'s slot (``CLUSTER KEYSLOT``, so ``{tags}`` count)."""
        return self.master_for_slot(self.keyslot(key))

    def role(self, port: int) -> str:
        """``master`` or ``slave``, as the node itself says (``INFO replication``)."""
        return str(self.replication(port)["role"])

    # -- failures ------------------------------------------------------------------

    def failover(self, replica_port: int, timeout: float = 20.0) -> None:
        """``CLUSTER FAILOVER`` on a replica (coordinated with its master, no data lost);
        returns when it is a master and the cluster is ok and agreed everywhere."""
        if self.role(replica_port) != "slave":
            raise ValueError(f"the node on port {replica_port} is not a replica")
        self.call(replica_port, "CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        self._until(
            deadline,
            lambda: None if self.role(replica_port) == "master" else "still a replica",
            f"CLUSTER FAILOVER on {replica_port}",
        )
        self.wait_ok(timeout=max(deadline - time.monotonic(), 1.0))

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` with all 16384 slots ok,
        all of them agree which master serves each slot and which replica follows
        which master, none sees a live node as failing, and every live replica's link
        to its master is up."""
        self._until(time.monotonic() + timeout, self._problem, "the cluster to be ok")

    def _problem(self) -> str | None:
        """What is not ok yet, or None."""
        live = self.live_ports
        if not live:
            return "no node is running"
        views: dict[int, set[tuple[object, str]]] = {}
        for port in live:
            info = _info(self.call(port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return f"{port}: cluster_state:{info.get('cluster_state')}"
            for key in ("cluster_slots_assigned", "cluster_slots_ok"):
                if info.get(key) != str(SLOTS):
                    return f"{port}: {key}:{info.get(key)}"
            nodes = parse_nodes(self.call(port, "CLUSTER", "NODES"))
            seen = {n.port for n in nodes}
            if set(live) - seen:
                return f"{port} does not know {sorted(set(live) - seen)} yet"
            for node in nodes:
                if node.port in live and node.failed:
                    return f"{port} sees {node.port} as {','.join(sorted(node.flags))}"
            # Who serves which slots, and who follows whom: a new master learns by
            # gossip that the old one is now its replica, and only then forwards
            # sharded messages to it.
            views[port] = {(r, n.id) for n in nodes if n.role == "master" for r in n.slots}
            views[port] |= {(n.id, n.master_id) for n in nodes if n.port in live and n.master_id}
            replication = self.replication(port)
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return f"{port}: replica link to its master is {replication['master_link_status']}"
        first = views[live[0]]
        for port, view in views.items():
            if view != first:
                return f"{port} and {live[0]} disagree about slots or replicas"
        return None

    def _until(self, deadline: float, problem: Callable[[], str | None], what: str) -> None:
        last = "not checked"
        while True:
            try:
                found = problem()
            except redis.RedisError as exc:
                found = f"{type(exc).__name__}: {exc}"
            if found is None:
                return
            last = found
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what}: {last}\n{self.logs()}")
            time.sleep(0.05)

    def _wait_answers(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._client(port, 0.5) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if not self.alive(port) or time.monotonic() > deadline:
                raise ServiceMissing(f"redis-server did not start on port {port}\n{self.logs()}")
            time.sleep(0.05)

    def logs(self, lines: int = 15) -> str:
        """The last lines of every node's log, for error messages."""
        parts = []
        for port in self.ports:
            path = self.workdir / str(port) / "redis.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            state = "running" if self.alive(port) else "not running"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- node {port} ({state}), {path}:\n{tail}")
        return "\n".join(parts)
