"""The scenarios of issue 4, run against one server process from start to stop.

Order matters and is fixed: idle RSS is measured on a fresh server (Python never
gives freed memory back, so measuring after a load phase would hide the cost of
subscriptions), then the 1,000-subscriber phases, then 5,000, then publishes
without subscribers. Every wait is bounded in time, every publish loop in count
and time.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
from demo import CHANNEL, PUBLISHER_USER, SUBSCRIBER_USER, token
from publisher import Publisher, PublishStats
from report import merge_reports
from servers import (
    Sampler,
    Server,
    ShardProcess,
    histogram_p99_ms,
    scrape_histograms,
)


@dataclass
class Plan:
    subs: int = 1000
    large_subs: int = 5000
    rate: float = 10.0
    duration: float = 10.0
    sat_duration: float = 5.0
    sat_window: int = 50
    pub_duration: float = 5.0
    pub_connections: int = 8
    rate_connections: int = 4
    shard_size: int = 2500
    drain_s: float = 20.0
    client_cpu: int = 1
    client: str = "python"  # subscriber shards: "node" (graphql-ws) or "python" (websockets)
    # "ws" (graphql-transport-ws), "sse" (graphql-sse, distinct mode) or "pusher"
    transport: str = "ws"
    database: str = "sqlite"  # ours: "sqlite" (embedded) or "postgres"; the baseline has none
    bus: str = "memory"  # both servers: "memory" or "redis"
    fast_paths: str = "on"  # ours: "on" (api/accel decides) or "off" (EDUMATRIX_FAST_PATHS=false)
    tree: str = ""  # ours: the source tree it runs from ("" = this one)


class ClientCpu:
    """CPU% of the client side (driver + shards), to flag a client-bound result."""

    def __init__(self, shards: list[ShardProcess]) -> None:
        self.procs = [psutil.Process(os.getpid())] + [psutil.Process(s.proc.pid) for s in shards]
        self.t0 = time.monotonic()
        self.cpu0 = self._cpu()

    def _cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.procs)

    def percent(self) -> float:
        return round(100 * (self._cpu() - self.cpu0) / (time.monotonic() - self.t0), 1)


class ServerRun:
    def __init__(self, server: Server, plan: Plan) -> None:
        self.server = server
        self.plan = plan
        self.sampler = Sampler(server)
        self.shards: list[ShardProcess] = []
        self.publisher = Publisher(
            "127.0.0.1", server.port, token(PUBLISHER_USER), CHANNEL, plan.pub_connections
        )
        self.seq_base = 0
        self.results: dict[str, Any] = {}

    # -- subscribers -----------------------------------------------------------------
    async def connect(self, n: int) -> dict[str, Any]:
        """Connect n subscribers over ceil(n / shard_size) shards; time the handshakes."""
        shards = max(1, math.ceil(n / self.plan.shard_size))
        scheme = "ws" if self.plan.transport == "ws" else "http"
        url = f"{scheme}://127.0.0.1:{self.server.port}/graphql"
        tok = token(SUBSCRIBER_USER)
        sizes = [n // shards + (1 if i < n % shards else 0) for i in range(shards)]
        plan = self.plan
        self.sampler.start()
        self.shards = await asyncio.gather(
            *(
                ShardProcess.start(
                    url, tok, CHANNEL, k, plan.client_cpu, plan.client, plan.transport
                )
                for k in sizes
            )
        )
        ready = await asyncio.gather(*(s.expect("ready", 120) for s in self.shards))
        server = self.sampler.stop()
        # Each shard measures the CPU of its connects itself: a process's whole CPU
        # time would also charge its start-up (Node's is ~0.1 s) to the handshakes.
        client_s = sum(r["cpu_s"] for r in ready)
        connected = sum(r["connected"] for r in ready)
        wall = max(r["wall_s"] for r in ready)
        errors = [e for s in self.shards for e in s.connect_errors][:3]
        await self.until_live(connected)
        return {
            "shards": shards,
            "connected": connected,
            "failed": n - connected,
            "connect_errors": errors,
            "handshakes_per_s": round(connected / wall, 1) if wall else None,
            "handshake_p50_ms": ready[0]["handshake_p50_ms"],
            "server_cpu_percent": server["cpu_percent"],
            "client_cpu_percent": round(100 * client_s / wall, 1) if wall else None,
        }

    async def until_live(self, connected: int, limit_s: float = 60.0) -> None:
        """Publish probes until every subscriber has received one: all are subscribed."""
        stats = PublishStats()
        deadline = time.monotonic() + limit_s
        seq = 0
        while time.monotonic() < deadline:
            if sum(s.progress["live"] for s in self.shards) >= connected:
                return
            await self.publisher.publish("warm", seq, stats)
            seq += 1
            await asyncio.sleep(0.3)
        raise TimeoutError(f"subscribers not all live after {limit_s}s")

    async def disconnect(self) -> None:
        await asyncio.gather(*(s.close() for s in self.shards))
        self.shards = []

    def received(self) -> int:
        return sum(s.progress["received"] for s in self.shards)

    def open_subs(self, connected: int) -> int:
        return connected - sum(int(s.progress["closed"]) for s in self.shards)

    # -- one measured phase ------------------------------------------------------------
    async def phase(self, name: str, connected: int, publish: Any) -> dict[str, Any]:
        quiet_s = await self.quiesce()
        for shard in self.shards:
            await shard.send({"cmd": "phase", "name": name})
        await asyncio.gather(*(s.expect("phase", 30) for s in self.shards))
        client = ClientCpu(self.shards)
        before = await asyncio.to_thread(scrape_histograms, self.server.port)
        self.sampler.start()
        stats: PublishStats = await publish()
        drained = await self.drain(stats, connected)
        usage = self.sampler.stop()
        after = await asyncio.to_thread(scrape_histograms, self.server.port)
        client_cpu = client.percent()
        for shard in self.shards:
            await shard.send({"cmd": "report", "acked": stats.acked})
        reports = await asyncio.gather(*(s.expect("report", 120) for s in self.shards))
        result = merge_reports(reports, stats)
        result.update(usage, client_cpu_percent=client_cpu, drain_s=drained, quiesce_s=quiet_s)
        result["server_timed"] = histogram_p99_ms(before, after)
        result["offered_per_s"] = round(len(stats.acked) / (stats.ended - stats.started), 1)
        return result

    async def drain(self, stats: PublishStats, connected: int) -> float:
        """Wait until every publish reached every open subscriber, it stalls, or drain_s.

        A publish that failed on the client (timeout) may still have gone out, so the
        target counts those too; if they did not, the 3 s stall rule ends the wait.
        What has not arrived when this returns is reported as lost.
        """
        t0 = time.monotonic()
        last, last_change = -1, t0
        while time.monotonic() - t0 < self.plan.drain_s:
            got = self.received()
            if got >= stats.attempted * self.open_subs(connected):
                break
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 3:
                break  # nothing arrives any more: the rest is lost, the report says so
            await asyncio.sleep(0.05)
        return round(time.monotonic() - t0, 2)

    async def quiesce(self, limit_s: float = 60.0) -> float:
        """Wait until the server is idle (<15% CPU over 0.5 s), so phases do not overlap.

        A server still working off the previous phase's backlog (or cleaning up
        thousands of closed sockets) would otherwise be charged to the next phase.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            self.sampler.start()
            await asyncio.sleep(0.5)
            if self.sampler.stop()["cpu_percent"] < 15:
                break
        return round(time.monotonic() - t0, 1)

    # -- the scenarios -----------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        plan = self.plan
        warm = PublishStats()
        for seq in range(20):
            await self.publisher.publish("warm", seq, warm)
        await asyncio.sleep(1.0)
        rss0 = self.sampler.rss()

        conn = await self.connect(plan.subs)
        await asyncio.sleep(1.0)
        rss1 = self.sampler.rss()
        n = conn["connected"]
        self.results["connect"] = conn
        self.results["idle_rss_mb_per_1000"] = round((rss1 - rss0) / 2**20 / n * 1000, 1)
        self.results["rss_before_subs_mb"] = round(rss0 / 2**20, 1)

        count = int(plan.rate * plan.duration)
        self.results["rate_small"] = await self.phase(
            "rate_small", n, lambda: self.publisher.at_rate("rate_small", plan.rate, count,
                                                            plan.duration + 5)
        )  # fmt: skip

        async def gate(published: int) -> None:
            # Closed loop: at most sat_window messages per subscriber in flight. The
            # shards report progress every 0.1 s over a pipe, so this polls; 10 s at most.
            for _ in range(2000):
                if published * self.open_subs(n) - self.received() <= plan.sat_window * n:
                    return
                await asyncio.sleep(0.005)

        self.results["saturation"] = await self.phase(
            "saturation", n, lambda: self.publisher.flood(
                "saturation", plan.sat_duration, 100_000, gate if plan.sat_window else None)
        )  # fmt: skip
        await self.disconnect()

        if plan.large_subs:
            conn = await self.connect(plan.large_subs)
            self.results["connect_large"] = conn
            n = conn["connected"]
            self.results["rate_large"] = await self.phase(
                "rate_large", n, lambda: self.publisher.at_rate("rate_large", plan.rate, count,
                                                                plan.duration + 5)
            )  # fmt: skip
            await self.disconnect()

        self.results["publish_only"] = await self.phase(
            "publish_only", 0, lambda: self.publisher.flood("publish_only", plan.pub_duration,
                                                            200_000)
        )  # fmt: skip
        await self.publisher.close()
        return self.results
