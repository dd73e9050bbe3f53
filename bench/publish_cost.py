"""What one publish costs the server, in process: the real app, no sockets.

Why: the fan-out benchmark's *publishes/s* phase measures a publish through
uvicorn on a shared machine, where two runs of the same code differ by 20-30%;
that hides a change worth 5%. This drives the real Starlette app (the same
``create_app``, lifespan, SQLite database, group commit, bus, event log and
aggregator as ``edumatrix serve`` in embedded mode) with ASGI messages for the
announcement mutation, and reports the CPU of the whole process (the SQLite
thread included) per publish over several rounds: compare the *minimum* of two
runs, the round least disturbed by the rest of the machine.

    .venv/bin/python bench/publish_cost.py                   # 5 rounds of 2,000
    .venv/bin/python bench/publish_cost.py --profile /tmp/publish.prof   # cProfile one round
    taskset -c 0 .venv/bin/python bench/publish_cost.py      # pinned, as the server is

What it leaves out, on purpose: HTTP parsing and the response write (uvicorn's
part, about a fifth of a publish through a socket), so the number is the server's
own work. Every answer is checked: a publish that does not return its id stops
the run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from demo import CHANNEL, PUBLISHER_USER, migrate_and_seed, server_env, token  # noqa: E402
from publisher import BODY, MUTATION  # noqa: E402

Message = dict[str, Any]


class Driver:
    """Publishes through the ASGI app, ``concurrency`` at a time, like 8 keep-alive
    publishers would (so the group commit batches as it does under load)."""

    def __init__(self, app: Any, state: dict[str, Any], concurrency: int) -> None:
        self.app = app
        self.state = state
        self.concurrency = concurrency
        self.header = f"Bearer {token(PUBLISHER_USER)}".encode()
        self.seq = 0

    async def publish(self) -> None:
        self.seq += 1
        variables = {
            "input": {"channel": CHANNEL, "title": f"cost|{self.seq}", "body": BODY,
                      "priority": "NORMAL"}
        }  # fmt: skip
        body = json.dumps({"query": MUTATION, "variables": variables}).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/graphql", "raw_path": b"/graphql",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80), "state": dict(self.state),
            "headers": [
                (b"host", b"bench"), (b"content-type", b"application/json"),
                (b"authorization", self.header), (b"content-length", str(len(body)).encode()),
            ],
        }  # fmt: skip
        delivered = False
        sent: list[Message] = []

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect while the request runs
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        answer = json.loads(sent[-1]["body"])
        if not (answer.get("data") or {}).get("publishAnnouncement", {}).get("id"):
            raise RuntimeError(f"publish {self.seq} failed: {answer}")

    async def round(self, count: int) -> None:
        per_worker, extra = divmod(count, self.concurrency)

        async def worker(n: int) -> None:
            for _ in range(n):
                await self.publish()

        await asyncio.gather(*(worker(per_worker + (i < extra)) for i in range(self.concurrency)))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from api.app import create_app
    from api.settings import Settings

    app = create_app(Settings())
    async with app.router.lifespan_context(app) as state:
        driver = Driver(app, dict(state), args.concurrency)
        await driver.round(args.warmup)
        writer = state["services"].announcements
        rounds: list[dict[str, float]] = []
        for index in range(args.rounds):
            profiler = cProfile.Profile() if args.profile and index == 0 else None
            batches, rows = writer.batches, writer.rows
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            await driver.round(args.count)
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            rounds.append(
                {
                    "cpu_us_per_publish": cpu / args.count * 1e6,
                    "publishes_per_s": args.count / wall,
                    "rows_per_batch": (writer.rows - rows) / max(writer.batches - batches, 1),
                    "profiled": bool(profiler),
                }
            )
    clean = [r for r in rounds if not r["profiled"]] or rounds
    cpu_values = [r["cpu_us_per_publish"] for r in clean]
    return {
        "count": args.count,
        "rounds": rounds,
        "cpu_us_per_publish_min": min(cpu_values),
        "cpu_us_per_publish_median": statistics.median(cpu_values),
        "affinity": sorted(os.sched_getaffinity(0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="publishes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--profile", help="write a cProfile of the first round here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if min(args.count, args.rounds, args.concurrency) < 1 or args.count > 100_000:
        parser.error("--count (1..100000), --rounds and --concurrency must be positive")
    with tempfile.TemporaryDirectory(prefix="publish-cost-") as tmp:
        env = server_env(Path(tmp))
        # One teacher publishes thousands of times a second here: the per-user
        # mutation rate of api/admission.py off (0 = unlimited).
        env["EDUMATRIX_RATE_LIMIT_USER_MUTATIONS"] = "0"
        migrate_and_seed(env, Path(tmp))
        os.environ.update(env)  # the app in this process reads its settings from here
        import uvloop

        result = uvloop.run(measure(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in result["rounds"]:
            note = "  (profiled)" if r["profiled"] else ""
            print(f"{r['cpu_us_per_publish']:7.0f} us CPU/publish  "
                  f"{r['publishes_per_s']:7.0f} publishes/s  "
                  f"{r['rows_per_batch']:5.1f} rows/batch{note}")  # fmt: skip
        print(f"min {result['cpu_us_per_publish_min']:.0f} us, "
              f"median {result['cpu_us_per_publish_median']:.0f} us CPU per publish "
              f"(= {1e6 / result['cpu_us_per_publish_min']:.0f}/s per core at best)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
