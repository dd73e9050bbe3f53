"""Publishes/s through uvicorn, for A/B comparisons of two source trees.

Why: a change worth 5-15% of a publish is lost in the noise of one full
``fanout.py`` run (its publish phase moves 20-30% between runs on a shared
machine), and ``publish_cost.py`` leaves out uvicorn and the socket, where a
change to thread hand-offs shows most (the SQLite group commit's cut was 6% in
process and 16% through uvicorn). This starts our server (``edumatrix serve``,
SQLite, memory bus, pinned to core 0 as in ``fanout.py``) from each ``--tree`` in
turn, floods the announcement mutation over 8 keep-alive connections, and prints
publishes/s and server CPU per publish; with two trees it alternates them, so
both see the same machine. ``--stock-tree PATH`` runs a tree with every fast path
of ``api/accel`` off (``EDUMATRIX_FAST_PATHS=false``): Strawberry's, uvicorn's and
Starlette's stock paths. Trees and stock trees alternate in the order given; each
round prints how many fast paths the server reported on (``n/a`` before api/accel).

    .venv/bin/python bench/publish_rate.py                       # this tree, 3 rounds
    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/publish_rate.py --tree /tmp/before --tree . --pairs 3
    .venv/bin/python bench/publish_rate.py --tree /tmp/before --tree . --stock-tree .
    git worktree remove /tmp/before

``--churn N`` first connects N subscribers to the publish channel (the
``graphql-transport-ws`` handshake and a subscribe, 50 at a time) and closes them
all, so a round measures a server that has had N connections come and go, as the
publish phase of a full ``fanout.py`` run does.

Every publish is checked (status 200 and an id, by ``publisher.Publisher``); a
failure stops the run. Each round is bounded by ``--seconds`` and 200,000
publishes; the churn by 300 s. The summary gives each tree's median and range, and
its per-round ratio to the first tree (min, median, max over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import websockets  # noqa: E402
from demo import CHANNEL, PUBLISHER_USER, SUBSCRIBER_USER, token  # noqa: E402
from publisher import Publisher  # noqa: E402
from servers import STOCK_ENV, Sampler, Server, fast_paths_on, raise_nofile  # noqa: E402
from subscribers import SUBSCRIPTION  # noqa: E402

CONNECTIONS = 8  # as fanout.py's publish phase
MAX_PUBLISHES = 200_000


@dataclass
class TreeServer(Server):
    """Our server run from another source tree: its code, migrations and seed."""

    tree: Path = BENCH.parent

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["PYTHONPATH"] = str(self.tree)
        return env


async def flood(server: Server, seconds: float) -> tuple[float, float]:
    """(publishes/s, server CPU µs per publish) of one round, after a 2 s warm-up."""
    publisher = Publisher("127.0.0.1", server.port, token(PUBLISHER_USER), CHANNEL, CONNECTIONS)
    try:
        await publisher.flood("warmup", 2.0, MAX_PUBLISHES)
        sampler = Sampler(server)
        sampler.start()
        stats = await publisher.flood("rate", seconds, MAX_PUBLISHES)
        usage = sampler.stop()
    finally:
        await publisher.close()
    if stats.failed:
        raise SystemExit(f"{stats.failed} publishes failed, first: {stats.first_error}")
    rate = len(stats.acked) / (stats.ended - stats.started)
    return rate, usage["cpu_percent"] / 100 / rate * 1e6


async def churn(server: Server, count: int) -> None:
    """``count`` subscribers connect, subscribe and leave again."""
    url, auth = f"ws://127.0.0.1:{server.port}/graphql", f"Bearer {token(SUBSCRIBER_USER)}"
    gate = asyncio.Semaphore(50)
    sockets: list[websockets.ClientConnection] = []

    async def subscribe() -> None:
        async with gate:
            ws = await websockets.connect(
                url,
                subprotocols=["graphql-transport-ws"],
                ping_interval=None,  # type: ignore[list-item]
            )
            sockets.append(ws)
            init = {"type": "connection_init", "payload": {"authorization": auth}}
            await ws.send(json.dumps(init))
            if json.loads(await ws.recv()).get("type") != "connection_ack":
                raise SystemExit("a subscriber was not acknowledged")
            payload = {"query": SUBSCRIPTION, "variables": {"name": CHANNEL}}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))

    try:
        await asyncio.wait_for(asyncio.gather(*(subscribe() for _ in range(count))), 300)
        await asyncio.sleep(1.0)  # every subscription registered
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    await asyncio.sleep(2.0)  # the server has let them all go
    print(f"{len(sockets):,} subscribers came and went", flush=True)


@dataclass(frozen=True)
class Variant:
    """A source tree, with its fast paths on (as configured) or all off (stock)."""

    tree: Path
    stock: bool = False

    @property
    def label(self) -> str:
        return f"{self.tree}{' (stock: fast paths off)' if self.stock else ''}"


def tree_variant(path: str) -> Variant:
    return Variant(Path(path).resolve())


def stock_variant(path: str) -> Variant:
    return Variant(Path(path).resolve(), stock=True)


def round_for(
    variant: Variant,
    seconds: float,
    churned: int,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> tuple[float, float, str]:
    """(publishes/s, server CPU µs per publish, fast paths on) of one fresh server;
    with ``database_url``/``redis_url``, cluster mode (a fresh database per round)."""
    extra_env = dict(STOCK_ENV) if variant.stock else {}
    server = TreeServer(
        "ours",
        extra_env=extra_env,
        tree=variant.tree,
        database_url=database_url,
        redis_url=redis_url,
    )
    server.start()
    try:
        fast = fast_paths_on(server.port)
        if churned:
            asyncio.run(churn(server, churned))
        return (*asyncio.run(flood(server, seconds)), fast)
    finally:
        server.stop()


def summary(label: str, rates: list[float], cpus: list[float], first: list[float]) -> str:
    """One tree's median and range, and its per-round ratio to the first tree's round."""
    ratios = sorted(r / f for r, f in zip(rates, first, strict=True))
    rate = f"median {statistics.median(rates):,.0f} publishes/s"
    spread = f"({min(rates):,.0f}-{max(rates):,.0f}) of {len(rates)} rounds"
    cpu = f"median {statistics.median(cpus):,.0f} µs CPU each"
    ratio = f"{statistics.median(ratios):.3f}x the first ({ratios[0]:.3f}-{ratios[-1]:.3f})"
    return f"{label}: {rate} {spread}, {cpu}; per round {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tree",
        type=tree_variant,
        action="append",
        dest="variants",
        help="source tree (repeatable)",
    )
    parser.add_argument(
        "--stock-tree",
        type=stock_variant,
        action="append",
        dest="variants",
        help="source tree run with EDUMATRIX_FAST_PATHS=false (repeatable)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="rounds per tree")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each round")
    parser.add_argument("--churn", type=int, default=0, help="subscribers that come and go first")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server to run on (a fresh database per round, dropped after); "
        "with --redis-url: cluster mode, the production path",
    )
    parser.add_argument("--redis-url", help="Redis for the bus (cluster mode)")
    args = parser.parse_args()
    if args.churn:
        raise_nofile(args.churn + 100)
    variants: list[Variant] = args.variants or [Variant(BENCH.parent)]
    for variant in variants:
        if not (variant.tree / "api" / "app.py").is_file():
            raise SystemExit(f"{variant.tree} is not a source tree of this project (no api/app.py)")
    rates: list[list[float]] = [[] for _ in variants]
    cpus: list[list[float]] = [[] for _ in variants]
    for n in range(args.pairs):
        for i, variant in enumerate(variants):
            rate, cpu_us, fast = round_for(
                variant, args.seconds, args.churn, args.database_url, args.redis_url
            )
            rates[i].append(rate)
            cpus[i].append(cpu_us)
            print(f"round {n + 1} {variant.label} [fast paths on: {fast}]: "
                  f"{rate:,.0f} publishes/s, {cpu_us:,.0f} µs CPU each", flush=True)  # fmt: skip
    for i, variant in enumerate(variants):
        print(summary(variant.label, rates[i], cpus[i], rates[0]))


if __name__ == "__main__":
    main()
