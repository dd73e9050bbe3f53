"""Pusher-protocol clients for tests: pusher-js and Laravel Echo (Node, driven line by
line through stdin), a raw WebSocket client speaking protocol 7 by hand (Python
``websockets``), and the official ``pusher`` server library pointed at a server.

The Node clients skip the test cleanly without Node.js or ``tests/node/node_modules``
(:func:`tests.node_clients.require_node`).
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pusher
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.node_clients import NODE_DIR, require_node
from tests.server import ServerProcess, base_env, token

APP_ID = "1001"
KEY = "nwkey12345"
SECRET = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
NORTHWOOD_APP = f"{APP_ID}:{KEY}:{SECRET}:northwood"
RV_APP_ID = "2002"
RV_KEY = "rvkey67890"
RV_SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
RIVERSIDE_APP = f"{RV_APP_ID}:{RV_KEY}:{RV_SECRET}:riverside"

Line = dict[str, Any]


def library(server: ServerProcess, *, secret: str = SECRET, app_id: str = APP_ID) -> Any:
    """The official Pusher server library, talking to ``server`` over plain HTTP."""
    key = KEY if app_id == APP_ID else RV_KEY
    return pusher.Pusher(
        app_id=app_id,
        key=key,
        secret=secret,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
        timeout=10,
    )


class NodeClient:
    """A ``tests/node`` script that takes JSON commands on stdin and prints JSON lines.

    Every line it printed stays in :attr:`seen`, so a test can also check what did
    *not* arrive once a later line proves the earlier one would have."""

    def __init__(self, script: str, config: dict[str, Any]) -> None:
        node = require_node()
        self.process = subprocess.Popen(
            [node, str(NODE_DIR / script), json.dumps(config)],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[Line] = []
        self._lines: queue.Queue[Line | None] = queue.Queue()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                if line.strip():
                    self._lines.put(json.loads(line))
        self._lines.put(None)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait_for(self, match: Callable[[Line], bool], timeout: float = 15.0) -> Line:
        """The first new line ``match`` accepts (all lines are kept in :attr:`seen`)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no matching line in {timeout} s; seen: {self.seen[-20:]}"
                ) from None
            if line is None:
                self.stop()
                raise AssertionError(
                    f"the script ended; seen: {self.seen[-20:]}\nstderr:\n{self.stderr()}"
                )
            self.seen.append(line)
            if match(line):
                return line

    async def await_for(self, match: Callable[[Line], bool], wait: float = 15.0) -> Line:
        return await asyncio.to_thread(self.wait_for, match, wait)

    def event(self, channel: str, event: str, timeout: float = 15.0) -> Line:
        return self.wait_for(
            lambda line: line.get("channel") == channel and line.get("event") == event, timeout
        )

    async def aevent(self, channel: str, event: str, wait: float = 15.0) -> Line:
        return await asyncio.to_thread(self.event, channel, event, wait)

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # by PID (Popen)
        self.process.wait(timeout=10)
        self._pumping.join(timeout=10)
        for stream in (self.process.stdin, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


class PusherJS(NodeClient):
    """pusher-js 8 in Node (``tests/node/pusher_client.mjs``), connected as ``user``."""

    def __init__(
        self,
        server: ServerProcess,
        user: str | None,
        *,
        key: str = KEY,
        bind: tuple[str, ...] = ("announcement", "client-typing"),
        auth_params: dict[str, str] | None = None,
    ) -> None:
        config = {
            "port": server.port,
            "key": key,
            "token": token(user) if user else None,
            "bind": list(bind),
            "authParams": auth_params or {},
        }
        super().__init__("pusher_client.mjs", config)
        self.socket_id = ""

    def connected(self, timeout: float = 15.0) -> PusherJS:
        line = self.wait_for(lambda line: line.get("state") == "connected", timeout)
        self.socket_id = line["socket_id"]
        return self

    def subscribe(self, channel: str) -> None:
        self.send(op="subscribe", channel=channel)

    def subscribed(self, channel: str, timeout: float = 15.0) -> Line:
        """Subscribe and wait for success; AssertionError on a subscription_error."""
        self.subscribe(channel)
        line = self.wait_for(
            lambda line: (
                line.get("channel") == channel
                and line.get("event")
                in ("pusher:subscription_succeeded", "pusher:subscription_error")
            ),
            timeout,
        )
        assert line["event"] == "pusher:subscription_succeeded", line
        return line


@asynccontextmanager
async def pusher_js(
    server: ServerProcess, user: str | None, **kwargs: Any
) -> AsyncIterator[PusherJS]:
    client = await asyncio.to_thread(PusherJS, server, user, **kwargs)
    try:
        await asyncio.to_thread(client.connected)
        yield client
    finally:
        await asyncio.to_thread(client.stop)


class ClosedError(AssertionError):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawPusher:
    """Protocol 7 spoken by hand over one WebSocket: what the server sends, exactly."""

    def __init__(self, ws: ClientConnection, server: ServerProcess, key: str) -> None:
        self.ws = ws
        self.server = server
        self.key = key
        self.socket_id = ""

    async def send(self, event: str, data: Any, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            message["channel"] = channel
        await self.ws.send(json.dumps(message))

    async def recv(self, wait: float = 5.0) -> Line:
        """The next message, ``data`` decoded when it is a JSON string."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), wait)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            raise ClosedError(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from exc
        message: Line = json.loads(raw)
        if isinstance(message.get("data"), str):
            try:
                message["data"] = json.loads(message["data"])
            except ValueError:
                pass
        return message

    async def expect(self, event: str, channel: str | None = None, wait: float = 5.0) -> Line:
        """The next message named ``event`` (on ``channel``), skipping others."""
        async with asyncio.timeout(wait):
            while True:
                message = await self.recv(wait)
                if message.get("event") == event and (
                    channel is None or message.get("channel") == channel
                ):
                    return message

    async def closed(self, wait: float = 10.0) -> tuple[list[Line], int | None]:
        """Every message until the server closes, and the close code."""
        got: list[Line] = []
        async with asyncio.timeout(wait):
            while True:
                try:
                    got.append(await self.recv(wait))
                except ClosedError as exc:
                    return got, exc.code

    async def auth(self, user: str, channel: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.post(
                f"{self.server.url}/pusher/auth",
                data={"socket_id": self.socket_id, "channel_name": channel},
                headers={"Authorization": f"Bearer {token(user)}"},
            )

    async def signin(self, user: str) -> Line:
        """pusher:signin with what /pusher/user-auth signs for ``user``; the reply."""
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                f"{self.server.url}/pusher/user-auth",
                data={"socket_id": self.socket_id},
                headers={"Authorization": f"Bearer {token(user)}"},
            )
        assert response.status_code == 200, response.text
        await self.send("pusher:signin", response.json())
        return await self.expect("pusher:signin_success")

    async def subscribe(self, channel: str, user: str | None = None, **extra: Any) -> None:
        """Send pusher:subscribe, signed by /pusher/auth as ``user`` when given."""
        data: dict[str, Any] = {"channel": channel, **extra}
        if user is not None:
            response = await self.auth(user, channel)
            assert response.status_code == 200, response.text
            data.update(response.json())
        await self.send("pusher:subscribe", data)

    async def subscribed(self, channel: str, user: str | None = None, **extra: Any) -> Line:
        await self.subscribe(channel, user, **extra)
        message = await self.expect_one_of(
            channel, "pusher_internal:subscription_succeeded", "pusher:subscription_error"
        )
        assert message["event"] == "pusher_internal:subscription_succeeded", message
        return message

    async def expect_one_of(self, channel: str, *events: str, wait: float = 5.0) -> Line:
        async with asyncio.timeout(wait):
            while True:
                message = await self.recv(wait)
                if message.get("channel") == channel and message.get("event") in events:
                    return message


@asynccontextmanager
async def raw_pusher(
    server: ServerProcess, *, key: str = KEY, query: str = "?protocol=7&client=js&version=8.6.0"
) -> AsyncIterator[RawPusher]:
    url = f"ws://127.0.0.1:{server.port}/app/{key}{query}"
    async with websockets.connect(url) as ws:
        client = RawPusher(ws, server, key)
        first = await client.recv()
        assert first["event"] == "pusher:connection_established", first
        client.socket_id = first["data"]["socket_id"]
        yield client


@pytest.fixture(scope="module")
def pusher_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One embedded server with the demo data and the Northwood Pusher app, shared by
    a test module (each test uses its own channels)."""
    workdir = tmp_path_factory.mktemp("pusher")
    server = ServerProcess(workdir, base_env(workdir, pusher_apps=NORTHWOOD_APP))
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    yield server
    server.stop()
