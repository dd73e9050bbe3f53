"""Publishes/s through uvicorn, for A/B comparisons of two source trees.

Why: a change worth 5-15% of a publish is lost in the noise of one full
``fanout.py`` run (its publish phase moves 20-30% between runs on a shared
machine), and ``publish_cost.py`` leaves out uvicorn and the socket, where a
change to thread hand-offs shows most (the SQLite group commit's cut was 6% in
process and 16% through uvicorn). This starts our server (``edumatrix serve``,
SQLite, memory bus, pinned to core 0 as in ``fanout.py``) from each ``--tree`` in
turn, floods the announcement mutation over 8 keep-alive connections, and prints
publishes/s and server CPU per publish; with two trees it alternates them, so
both see the same machine.

    .venv/bin/python bench/publish_rate.py                       # this tree, 3 rounds
    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/publish_rate.py --tree /tmp/before --tree . --pairs 3
    git worktree remove /tmp/before

``--churn N`` first connects N subscribers to the publish channel (the
``graphql-transport-ws`` handshake and a subscribe, 50 at a time) and closes them
all, so a round measures a server that has had N connections come and go, as the
publish phase of a full ``fanout.py`` run does.

Every publish is checked (status 200 and an id, by ``publisher.Publisher``); a
failure stops the run. Each round is bounded by ``--seconds`` and 200,000
publishes; the churn by 300 s.
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
from servers import Sampler, Server, raise_nofile  # noqa: E402
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


def round_for(tree: Path, seconds: float, churned: int) -> tuple[float, float]:
    server = TreeServer("ours", tree=tree)
    server.start()
    try:
        if churned:
            asyncio.run(churn(server, churned))
        return asyncio.run(flood(server, seconds))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--pairs", type=int, default=3, help="rounds per tree")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each round")
    parser.add_argument("--churn", type=int, default=0, help="subscribers that come and go first")
    args = parser.parse_args()
    if args.churn:
        raise_nofile(args.churn + 100)
    trees = [t.resolve() for t in args.tree or [BENCH.parent]]
    for tree in trees:
        if not (tree / "api" / "app.py").is_file():
            raise SystemExit(f"{tree} is not a source tree of this project (no api/app.py)")
    results: dict[Path, list[float]] = {tree: [] for tree in trees}
    for n in range(args.pairs):
        for tree in trees:
            rate, cpu_us = round_for(tree, args.seconds, args.churn)
            results[tree].append(rate)
            print(f"round {n + 1} {tree}: {rate:,.0f} publishes/s, {cpu_us:,.0f} µs CPU each")
    for tree, rates in results.items():
        print(f"{tree}: median {statistics.median(rates):,.0f} publishes/s of {len(rates)} rounds")


if __name__ == "__main__":
    main()
