"""Publish through the public mutation over keep-alive HTTP/1.1, with a real token.

Why not httpx: at thousands of requests per second a general HTTP client costs
more client CPU than the server spends on a publish, so the "publishes/s" number
would measure the client. This is a minimal HTTP/1.1 client on asyncio streams:
one prebuilt header block per connection, Content-Length responses only (what
Starlette and Strawberry send), and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MUTATION = "mutation($input: PublishAnnouncementInput!){ publishAnnouncement(input:$input){ id } }"
BODY = "b" * 64  # the 64-byte payload
IDLE_REOPEN_S = 2.0  # well under uvicorn's 5 s keep-alive timeout


@dataclass
class PublishStats:
    """What a publishing run did: acknowledged seqs, failures, request latencies."""

    acked: list[int] = field(default_factory=list)
    failed: int = 0
    first_error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)  # first 80 chars -> count
    request_ms: list[float] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def attempted(self) -> int:
        return len(self.acked) + self.failed


class HttpConnection:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        self.used = 0.0  # monotonic time of the last complete response
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, limit_s: float = 30.0) -> tuple[int, bytes]:
        # uvicorn closes keep-alive connections idle for 5 s; a request written into
        # one that is closing fails without reaching the server, so reopen first.
        stale = time.monotonic() - self.used > IDLE_REOPEN_S
        if self.reader is None or self.writer is None or self.reader.at_eof() or stale:
            self.drop()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), limit_s)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = (line.partition(":") for line in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in fields}
        if "content-length" not in headers:
            raise RuntimeError("response without Content-Length")
        length = int(headers["content-length"])
        body = await asyncio.wait_for(self.reader.readexactly(length), limit_s)
        self.used = time.monotonic()
        return status, body

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


class Publisher:
    """K keep-alive connections; each publish gets the next free one.

    ``flood`` runs exactly K publishers. ``at_rate`` may open up to ``max_connections``
    so a slow server cannot turn the open-loop schedule into a closed loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        channel: str,
        connections: int,
        max_connections: int = 64,
    ) -> None:
        self.channel = channel
        self.host, self.port, self.token = host, port, token
        self.max_connections = max_connections
        self.conns: asyncio.Queue[HttpConnection] = asyncio.Queue()
        self._all = [HttpConnection(host, port, token) for _ in range(connections)]
        self.flood_connections = connections
        for conn in self._all:
            self.conns.put_nowait(conn)

    def _grow(self) -> None:
        """Add a connection when all are busy (open-loop publishing only)."""
        if self.conns.empty() and len(self._all) < self.max_connections:
            conn = HttpConnection(self.host, self.port, self.token)
            self._all.append(conn)
            self.conns.put_nowait(conn)

    def body(self, phase: str, seq: int, stamp_ns: int | None) -> bytes:
        title = f"{phase}|{seq}|{stamp_ns or time.monotonic_ns()}"
        variables = {
            "input": {"channel": self.channel, "title": title, "body": BODY, "priority": "NORMAL"}
        }
        return json.dumps({"query": MUTATION, "variables": variables}).encode()

    async def publish(
        self, phase: str, seq: int, stats: PublishStats, stamp_ns: int | None = None
    ) -> None:
        """One publish; ``stamp_ns`` (default: now) is where its latency starts."""
        try:
            conn = await self.conns.get()
        except asyncio.CancelledError:
            stats.failed += 1
            stats.errors["never sent: no free connection"] = 1 + stats.errors.get(
                "never sent: no free connection", 0
            )
            raise
        answered = acked = False
        error = "cancelled: no answer within the phase's time limit"
        try:
            t0 = time.perf_counter()
            status, raw = await conn.post(self.body(phase, seq, stamp_ns))
            answered = True
            stats.request_ms.append((time.perf_counter() - t0) * 1000)
            result = json.loads(raw)
            if status == 200 and not result.get("errors") and result.get("data"):
                stats.acked.append(seq)
                acked = True
                return
            error = f"HTTP {status}: {str(result.get('errors') or result)[:300]}"
        except Exception as exc:  # a broken connection is a failed publish, not a crash
            error = repr(exc)[:300]
        finally:
            if not answered:  # a request without its response leaves the stream unusable
                conn.drop()
            self.conns.put_nowait(conn)
            if not acked:
                stats.failed += 1
                stats.errors[error[:80]] = stats.errors.get(error[:80], 0) + 1
                stats.first_error = stats.first_error or error

    async def at_rate(self, phase: str, rate: float, count: int, limit_s: float) -> PublishStats:
        """Open loop: seq i starts at t0 + i/rate, whatever the server's pace.

        Latency starts at the scheduled time, not when a connection became free, so
        a server that stalls publishes cannot hide the wait (coordinated omission).
        """
        stats = PublishStats(started=time.monotonic())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tasks = []
        for seq in range(count):
            delay = t0 + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() - t0 > limit_s:
                break
            stamp = int((t0 + seq / rate - loop.time()) * 1e9) + time.monotonic_ns()
            self._grow()
            tasks.append(asyncio.create_task(self.publish(phase, seq, stats, stamp)))
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=limit_s + 30)
            for task in pending:  # counted as failed by publish() itself
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        stats.ended = time.monotonic()
        return stats

    async def flood(
        self,
        phase: str,
        duration_s: float,
        max_count: int,
        gate: Callable[[int], Awaitable[None]] | None = None,
    ) -> PublishStats:
        """As fast as the connections allow, bounded by time and count.

        ``gate(published)`` may hold a publisher back (the saturation window, so a
        backlog cannot grow without bound and the run stays measurable).
        """
        stats = PublishStats(started=time.monotonic())
        deadline = stats.started + duration_s
        seqs = iter(range(max_count))

        async def worker() -> None:
            for seq in seqs:
                if time.monotonic() >= deadline:
                    return
                if gate is not None:
                    await gate(len(stats.acked))
                    if time.monotonic() >= deadline:
                        return
                await self.publish(phase, seq, stats)

        await asyncio.gather(*(worker() for _ in range(self.flood_connections)))
        stats.ended = time.monotonic()
        return stats

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
