"""A victim's delivery latency, unloaded and while another user floods mutations.

Why: admission control (api/admission.py) must keep one flooding client from
slowing everyone else. This starts our server (SQLite, memory bus, pinned to core
0 as in ``fanout.py``) with its default limits, subscribes a victim to a classroom,
publishes to it at a steady rate as its teacher, and measures publish-to-receipt
latency for ``--seconds`` unloaded, then for ``--seconds`` while a flooder process
(pinned to core 1) sends a student's mutations as fast as ``--flood-connections``
keep-alive connections allow. Rounds alternate unloaded and flooded phases, so both
see the same machine; the table reports p50/p99 per phase and their ratio, and what
the flooder got (200s, 429s).

    .venv/bin/python bench/flood.py                 # 3 rounds of 10 s + 10 s, 10 publishes/s
    .venv/bin/python bench/flood.py --rounds 5 --seconds 15

Loopback only; every loop is bounded by its phase's time and by MAX_FLOOD
requests per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import websockets  # noqa: E402
from demo import CHANNEL, PUBLISHER_USER, SUBSCRIBER_USER, token  # noqa: E402
from publisher import MUTATION, HttpConnection  # noqa: E402
from servers import Server, raise_nofile  # noqa: E402

FLOODER_USER = "nw-dee"  # another student: her own rate, nobody's data
FLOOD_MUTATION = json.dumps({"query": "mutation { markRead(ids: []) }"}).encode()
MAX_FLOOD = 200_000  # requests per flooded phase, whatever the time
VICTIM_QUERY = "subscription($c: String!) { channel(name: $c) { offset announcement { title } } }"


async def flood(port: int, seconds: float, connections: int) -> None:
    """The flooder process: mutations as fast as the connections allow; prints
    its status counts as one JSON line."""
    counts: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    sent = 0

    async def loop() -> None:
        nonlocal sent
        conn = HttpConnection("127.0.0.1", port, token(FLOODER_USER))
        try:
            while time.monotonic() < deadline and sent < MAX_FLOOD:
                sent += 1
                status, _ = await conn.post(FLOOD_MUTATION)
                counts[status] = counts.get(status, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(loop() for _ in range(connections)))
    print(json.dumps({str(k): v for k, v in counts.items()}))


async def victim_phase(port: int, seconds: float, rate: float) -> list[float]:
    """Publish at ``rate``/s as the teacher for ``seconds``; the victim's latencies
    (ms, publish start to receipt)."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    url = f"ws://127.0.0.1:{port}/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {
            "type": "connection_init",
            "payload": {"authorization": f"Bearer {token(SUBSCRIBER_USER)}"},
        }
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        payload = {"query": VICTIM_QUERY, "variables": {"c": CHANNEL}}
        await ws.send(json.dumps({"id": "v", "type": "subscribe", "payload": payload}))
        await asyncio.sleep(0.3)

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") != "next":
                    continue
                title = message["payload"]["data"]["channel"]["announcement"]["title"]
                if title in sent:
                    latencies.append((time.perf_counter() - sent.pop(title)) * 1000)

        reader = asyncio.create_task(receive())
        conn = HttpConnection("127.0.0.1", port, token(PUBLISHER_USER))
        try:
            count = int(seconds * rate)
            start = time.perf_counter()
            for seq in range(count):
                await asyncio.sleep(max(0.0, start + seq / rate - time.perf_counter()))
                title = f"v{seq}-{time.monotonic_ns()}"
                variables = {"input": {"channel": CHANNEL, "title": title, "body": "b"}}
                body = json.dumps({"query": MUTATION, "variables": variables}).encode()
                sent[title] = time.perf_counter()
                status, answer = await conn.post(body)
                if status != 200 or b'"errors"' in answer:
                    raise RuntimeError(f"the victim's publish failed: {status} {answer[:200]!r}")
            await asyncio.sleep(1.0)  # the last deliveries
        finally:
            reader.cancel()
            await conn.close()
        if sent:
            raise RuntimeError(f"{len(sent)} of the victim's messages never arrived")
    return latencies


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


async def run(args: argparse.Namespace) -> None:
    raise_nofile(4096)
    server = Server("ours", extra_env={  # admission control on, with its defaults
        f"EDUMATRIX_{name}": value for name, value in (
            ("RATE_LIMIT_USER_MUTATIONS", "20/second"),
            ("RATE_LIMIT_SERVICE_MUTATIONS", "200/second"),
            ("RATE_LIMIT_WS_MESSAGES", "200/second"),
            ("MAX_CONNECTIONS_PER_IP", "1000"),
            ("MAX_CONNECTIONS_PER_SUBJECT", "50"),
            ("MAX_SUBSCRIPTIONS_PER_SUBJECT", "500"))})  # fmt: skip
    server.start()
    rows: list[tuple[str, list[float], str]] = []
    try:
        for _ in range(args.rounds):
            rows.append(("unloaded", await victim_phase(server.port, args.seconds, args.rate), ""))
            flooder = await asyncio.create_subprocess_exec(
                "taskset", "-c", "1", sys.executable, __file__, "--flooder",
                "--port", str(server.port), "--seconds", str(args.seconds + 1.5),
                "--flood-connections", str(args.flood_connections),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                await asyncio.sleep(0.5)  # the flood is under way first
                latencies = await victim_phase(server.port, args.seconds, args.rate)
                out, _ = await asyncio.wait_for(flooder.communicate(), args.seconds + 30)
            finally:
                if flooder.returncode is None:
                    flooder.kill()
            rows.append(("flooded", latencies, out.decode().strip()))
    finally:
        server.stop()
    print(f"\nvictim: {args.rate:g} publishes/s, {args.seconds:g} s per phase; "
          f"flooder: {args.flood_connections} connections of {FLOODER_USER}")  # fmt: skip
    print("| phase | deliveries | p50 ms | p99 ms | flooder statuses |")
    print("|---|---|---|---|---|")
    for phase, latencies, statuses in rows:
        line = f"| {phase} | {len(latencies)} | {p(latencies, 50):.1f} | {p(latencies, 99):.1f}"
        print(f"{line} | {statuses} |")
    calm = [x for phase, values, _ in rows if phase == "unloaded" for x in values]
    loud = [x for phase, values, _ in rows if phase == "flooded" for x in values]
    print(f"\nall rounds: unloaded p99 {p(calm, 99):.1f} ms, flooded p99 {p(loud, 99):.1f} ms, "
          f"ratio {p(loud, 99) / p(calm, 99):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="victim publishes/s (under the user rate limit)"
    )
    parser.add_argument("--flood-connections", type=int, default=8)
    parser.add_argument("--flooder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flooder:
        asyncio.run(flood(args.port, args.seconds, args.flood_connections))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
