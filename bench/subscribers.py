"""One subscriber shard: many graphql-transport-ws connections in one asyncio process
(or, with ``--transport sse``, many graphql-sse event streams).

Why a separate process: the driver publishes and samples the server while the
subscribers receive; keeping them apart means a busy receive loop cannot delay a
publish timestamp, and a large N can be split over several shards (all on the
client core). The driver talks to a shard with JSON lines: commands on stdin,
events (``ready``, ``progress``, ``report``) on stdout.

Every message title is ``phase|seq|t_ns`` (``t_ns`` = ``time.monotonic_ns()`` just
before the publish request was written; Linux's monotonic clock is system-wide,
so it compares across processes). Latency is receipt minus that. Loss and
duplication are checked per subscriber against the seqs the driver says were
acknowledged, and offsets are checked for repeats, gaps and reordering.

Over SSE each subscriber is one ``POST /graphql`` with ``Accept: text/event-stream``
(graphql-sse's distinct connections mode) on an httpx client whose pool has no
connection cap: httpx's default of 100 connections would queue the 101st stream
until a pool timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

SUBSCRIPTION = (
    "subscription($name:String!){ channel(name:$name){ offset epoch channel kind "
    "publishedAt recovered announcement{ id title body priority } } }"
)
PROGRESS_EVERY = 0.1
OPEN_TIMEOUT = 30.0  # connect + ack (ws) or response headers (sse)


@dataclass
class Sub:
    """What one subscriber saw in the current phase."""

    offsets: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    live: bool = False  # received anything since connecting: the subscription is active
    close: str | None = None  # "code reason" once the server closed us
    errors: int = 0


class Shard:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.subs: list[Sub] = []
        self.sockets: list[ClientConnection] = []
        self.streams: list[httpx.Response] = []
        self.http: httpx.AsyncClient | None = None  # --transport sse
        self.closing = False  # we are ending the streams: their end is not the server's
        self.phase = ""
        self.latencies: list[float] = []
        self.received = 0
        self.first_ns = 0
        self.last_ns = 0
        self.tasks: list[asyncio.Task[None]] = []

    def emit(self, event: dict[str, Any]) -> None:
        try:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the driver is gone: nobody to report to, just leave
            os._exit(1)

    async def _open(self, sem: asyncio.Semaphore, handshakes: list[float]) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                ws = await websockets.connect(
                    self.args.url,
                    subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                    compression="deflate" if self.args.deflate else None,
                    ping_interval=None,
                    open_timeout=OPEN_TIMEOUT,
                    max_queue=None,
                )
                init = {"authorization": f"Bearer {self.args.token}"}
                await ws.send(json.dumps({"type": "connection_init", "payload": init}))
                ack = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
                if ack.get("type") != "connection_ack":
                    raise RuntimeError(f"no ack: {ack}")
            except Exception as exc:  # counted, not fatal: the report says how many
                self.emit({"event": "connect_error", "error": repr(exc)[:200]})
                return
            handshakes.append(time.perf_counter() - t0)
            variables = {"name": self.args.channel}
            await ws.send(
                json.dumps(
                    {
                        "id": "1",
                        "type": "subscribe",
                        "payload": {"query": SUBSCRIPTION, "variables": variables},
                    }
                )
            )
            sub = Sub()
            self.subs.append(sub)
            self.sockets.append(ws)
            self.tasks.append(asyncio.create_task(self._read(ws, sub)))

    def _next(self, sub: Sub, payload: dict[str, Any], now: int) -> None:
        """One delivery (a ``next`` payload), whichever the transport: the hot path."""
        event = (payload.get("data") or {}).get("channel")
        if payload.get("errors") or not event:
            sub.errors += 1
            return
        sub.live = True
        phase, seq, sent = event["announcement"]["title"].split("|")
        if phase != self.phase:
            return
        sub.offsets.append(event["offset"])
        sub.seqs.append(int(seq))
        self.latencies.append((now - int(sent)) / 1e6)
        self.received += 1
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now

    async def _read(self, ws: ClientConnection, sub: Sub) -> None:
        """The hot loop: stay cheap, the client core must outrun the server core."""
        loads = json.loads
        try:
            async for raw in ws:
                now = time.monotonic_ns()
                msg = loads(raw)
                kind = msg["type"]
                if kind == "next":
                    self._next(sub, msg["payload"], now)
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind in ("error", "complete"):
                    sub.errors += 1
                    sub.close = f"{kind} {str(msg.get('payload'))[:120]}"
        except websockets.ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        if sub.close is None:
            sub.close = f"{rcvd.code} {rcvd.reason}" if rcvd else "closed without a close frame"

    async def _open_sse(self, sem: asyncio.Semaphore, handshakes: list[float]) -> None:
        """One graphql-sse stream (distinct connections mode): open once the server
        answered 200 with ``text/event-stream``; anything else is a connect error."""
        assert self.http is not None
        body = {"query": SUBSCRIPTION, "variables": {"name": self.args.channel}}
        headers = {"accept": "text/event-stream", "authorization": f"Bearer {self.args.token}"}
        async with sem:
            t0 = time.perf_counter()
            request = self.http.build_request("POST", self.args.url, json=body, headers=headers)
            response: httpx.Response | None = None
            try:
                response = await asyncio.wait_for(
                    self.http.send(request, stream=True), OPEN_TIMEOUT
                )
                kind = response.headers.get("content-type", "")
                if response.status_code != 200 or not kind.startswith("text/event-stream"):
                    text = (await response.aread())[:120].decode(errors="replace")
                    raise RuntimeError(f"{response.status_code} {kind}: {text}")
            except Exception as exc:  # counted, not fatal: the report says how many
                if response is not None:
                    await response.aclose()
                self.emit({"event": "connect_error", "error": repr(exc)[:200]})
                return
            handshakes.append(time.perf_counter() - t0)
        sub = Sub()
        self.subs.append(sub)
        self.streams.append(response)
        self.tasks.append(asyncio.create_task(self._read_sse(response, sub)))

    async def _read_sse(self, response: httpx.Response, sub: Sub) -> None:
        """The SSE hot loop: ``event:`` and ``data:`` lines, dispatched at the blank
        line that ends each event; ``:`` comments (heartbeats) are skipped."""
        loads = json.loads
        event, data = "", ""
        try:
            async for line in response.aiter_lines():
                if line:
                    if line.startswith("data:"):
                        data = line[5:].lstrip() if not data else f"{data}\n{line[5:].lstrip()}"
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    continue
                if event == "next":
                    self._next(sub, loads(data), time.monotonic_ns())
                elif event == "complete":
                    if not self.closing:
                        sub.errors += 1
                        sub.close = "complete"
                    return
                event, data = "", ""
        except httpx.HTTPError as exc:
            if sub.close is None and not self.closing:
                sub.close = f"stream error {exc!r}"[:160]
            return
        if sub.close is None and not self.closing:
            sub.close = "stream ended without complete"

    async def connect_all(self) -> None:
        sem = asyncio.Semaphore(self.args.concurrency)
        handshakes: list[float] = []
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if self.args.transport == "sse":
            self.http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                timeout=httpx.Timeout(OPEN_TIMEOUT, read=None),  # streams idle between events
                trust_env=False,  # loopback only: no proxy from the environment
            )
            opens = (self._open_sse(sem, handshakes) for _ in range(self.args.count))
        else:
            opens = (self._open(sem, handshakes) for _ in range(self.args.count))
        await asyncio.gather(*opens)
        wall = time.perf_counter() - t0
        handshakes.sort()
        self.emit(
            {
                "event": "ready",
                "connected": len(self.subs),
                "failed": self.args.count - len(self.subs),
                "wall_s": wall,
                "cpu_s": time.process_time() - cpu0,  # of the connects, not of the imports
                "handshake_p50_ms": 1000 * handshakes[len(handshakes) // 2] if handshakes else None,
            }
        )

    def report(self, acked: list[int]) -> dict[str, Any]:
        expected = set(acked)
        lost = dup_seq = dup_off = gaps = reordered = unexpected = errors = 0
        closes: dict[str, int] = {}
        for sub in self.subs:
            got = set(sub.seqs)
            lost += len(expected - got)
            unexpected += len(got - expected)
            dup_seq += len(sub.seqs) - len(got)
            dup_off += len(sub.offsets) - len(set(sub.offsets))
            reordered += sum(
                1 for a, b in zip(sub.offsets, sub.offsets[1:], strict=False) if b <= a
            )
            if sub.offsets:
                gaps += (max(sub.offsets) - min(sub.offsets) + 1) - len(set(sub.offsets))
            errors += sub.errors
            if sub.close is not None:
                closes[sub.close] = closes.get(sub.close, 0) + 1
        return {
            "event": "report",
            "phase": self.phase,
            "subscribers": len(self.subs),
            "received": self.received,
            "latencies_ms": [round(x, 3) for x in self.latencies],
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "lost": lost,
            "duplicated": dup_seq,
            "duplicated_offsets": dup_off,
            "offset_gaps": gaps,
            "reordered": reordered,
            "unexpected": unexpected,
            "errors": errors,
            "closed": closes,
        }

    def start_phase(self, name: str) -> None:
        self.phase = name
        self.latencies = []
        self.received = self.first_ns = self.last_ns = 0
        for sub in self.subs:
            sub.offsets, sub.seqs = [], []

    async def progress(self) -> None:
        while True:
            closed = sum(1 for s in self.subs if s.close is not None)
            live = sum(1 for s in self.subs if s.live)
            self.emit({"event": "progress", "received": self.received, "live": live,
                       "closed": closed})  # fmt: skip
            await asyncio.sleep(PROGRESS_EVERY)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await self.connect_all()
        ticker = asyncio.create_task(self.progress())
        try:
            while line := await reader.readline():
                cmd = json.loads(line)
                if cmd["cmd"] == "phase":
                    self.start_phase(cmd["name"])
                    self.emit({"event": "phase", "name": cmd["name"]})
                elif cmd["cmd"] == "report":
                    self.emit(self.report(cmd["acked"]))
                elif cmd["cmd"] == "close":
                    break
        finally:
            ticker.cancel()
            self.closing = True
            await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await asyncio.gather(*(r.aclose() for r in self.streams), return_exceptions=True)
            if self.http is not None:
                await self.http.aclose()
            self.emit({"event": "closed"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight")
    parser.add_argument("--cpu", type=int, default=None, help="pin this shard to one core")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--transport",
        choices=["ws", "sse"],
        default="ws",
        help="ws = graphql-transport-ws (--url ws://...), sse = graphql-sse (--url http://...)",
    )
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.count + 256)), hard))
    try:
        import uvloop  # shipped with uvicorn[standard]; the cheaper loop keeps up better

        uvloop.run(Shard(args).serve())
    except ImportError:
        asyncio.run(Shard(args).serve())


if __name__ == "__main__":
    main()
