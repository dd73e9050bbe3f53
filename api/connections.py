"""Every open GraphQL WebSocket of this process, so they can be closed on purpose.

Three reasons to close a socket from outside its own handler: its token expired
(4403 "token expired", at the deadline ``TokenService.deadline`` gives), a
subscriber fell too far behind (4008, it must not hold others up or grow memory),
and the process is shutting down (1001 "going away", so clients reconnect
elsewhere and resume with ``since``). Closing is bounded in time: a peer that
stopped reading cannot hold it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from types import FrameType
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

log = structlog.get_logger(__name__)

GOING_AWAY = 1001
UNAUTHORIZED = 4401  # an expired token at connection_init (graphql-ws does not retry it)
FORBIDDEN = 4403  # refused at connection_init; "token expired" when an open one's runs out
SLOW_CONSUMER = 4008
# A slow peer's close frame waits behind its full socket; it goes out as soon as
# the peer reads again. A peer that never reads is dropped by uvicorn's ping timeout.
SLOW_CLOSE_TIMEOUT = 60.0
DRAIN_CLOSE_TIMEOUT = 5.0


class Connections:
    def __init__(self, also_drain: Callable[[], int] | None = None) -> None:
        """``also_drain``: ends this process's HTTP streams (``api.streaming``) when
        the WebSockets are drained, so they too end with a reason, not a cut."""
        self._also_drain = also_drain
        self._open: set[WebSocket] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    def add(self, websocket: WebSocket) -> None:
        self._open.add(websocket)

    def discard(self, websocket: WebSocket) -> None:
        self._open.discard(websocket)

    def expire_at(self, websocket: WebSocket, deadline: float | None) -> asyncio.TimerHandle | None:
        """Close ``websocket`` with 4403 "token expired" at ``deadline`` (a Unix time,
        ``TokenService.deadline``; None: never). Cancel the handle to call it off.

        A timer, not a sleeping task: one per connection for the token's lifetime.
        """
        if deadline is None:
            return None
        delay = max(deadline - time.time(), 0.0)
        return asyncio.get_running_loop().call_later(delay, self.close_expired, websocket)

    def close_expired(self, websocket: WebSocket) -> None:
        log.info("ws.token_expired")
        self._spawn(self.close(websocket, FORBIDDEN, "token expired"))

    def disconnect_slow(self, websocket: WebSocket) -> None:
        """Close without waiting (called from the synchronous fan-out path)."""
        self._spawn(self.close(websocket, SLOW_CONSUMER, "slow consumer", SLOW_CLOSE_TIMEOUT))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(
        self, websocket: WebSocket, code: int, reason: str, limit: float = DRAIN_CLOSE_TIMEOUT
    ) -> None:
        if websocket.application_state is not WebSocketState.CONNECTED:
            return
        try:
            async with asyncio.timeout(limit):
                await websocket.close(code=code, reason=reason)
        except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect) as exc:
            # The peer is not reading; uvicorn drops the transport when the handler ends.
            log.info("ws.close_incomplete", code=code, error=repr(exc))

    async def drain(self) -> int:
        """Close every socket with 1001 (and end every HTTP stream); returns how many
        sockets were open."""
        self.draining = True
        if self._also_drain is not None:
            streams = self._also_drain()
            log.info("server.http_streams_ended", streams=streams)
        sockets = list(self._open)
        await asyncio.gather(
            *(self.close(ws, GOING_AWAY, "server shutting down") for ws in sockets)
        )
        for task in list(self._closing):
            if task is not asyncio.current_task():
                with suppress(asyncio.CancelledError):
                    await task
        return len(sockets)

    def drain_before(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Run :meth:`drain` when a stop signal arrives, then hand it to the server.

        uvicorn's own shutdown closes WebSockets with 1012; by closing ours with
        1001 first and only then calling uvicorn's handler (which stops accepting
        and lets in-flight requests such as mutations finish), clients get the code
        the design promises. Installed from the lifespan, so it works in every
        ``--workers`` process. Python only lets the main thread install handlers: an
        app run elsewhere (a test client's thread, an embedding server) skips this
        and relies on its host's shutdown.
        """
        if threading.current_thread() is not threading.main_thread():
            log.info("server.no_drain_signals", reason="not the main thread")
            return
        loop = asyncio.get_running_loop()
        for sig in signals:
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                if self.draining:  # a second signal: stop now
                    previous(signum, frame)
                    return
                self.draining = True
                loop.call_soon_threadsafe(self._drain_then, previous, signum, frame)

            signal.signal(sig, handler)

    def _drain_then(self, previous: Any, signum: int, frame: FrameType | None) -> None:
        async def run() -> None:
            closed = await self.drain()
            log.info("server.drained", websockets=closed)
            previous(signum, frame)

        task = asyncio.get_running_loop().create_task(run())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
