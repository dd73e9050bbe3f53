"""Pusher webhooks and channel occupancy across processes (api/pusher_webhooks.py,
streams/pusher_occupancy.py): each event once, signed as Pusher signs, and a
crashed process's channels vacated."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import _admin
from tests.pusher_clients import APP_ID, KEY, NORTHWOOD_APP, SECRET, library, raw_pusher
from tests.server import ServerProcess, base_env
from tests.services import free_port

Make = Callable[..., ServerProcess]
PRIVATE = "private-institution.northwood.department.nw-math"
PRESENCE = "presence-institution.northwood.department.nw-math"
# The listing test's own channels: the module's tests share two processes.
LISTED_PRIVATE = "private-institution.northwood.classroom.nw-math-102"
LISTED_PRESENCE = "presence-institution.northwood.classroom.nw-math-102"


class Receiver:
    """A webhook endpoint on loopback that keeps every request it was sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def events(self) -> list[dict[str, Any]]:
        found = []
        for _headers, body in list(self.requests):
            found.extend(json.loads(body)["events"])
        return found

    async def wait_for(self, match: Callable[[list[dict[str, Any]]], bool], wait: float) -> None:
        end = time.monotonic() + wait
        while not match(self.events()):
            if time.monotonic() > end:
                raise AssertionError(f"webhooks never matched; got {self.events()}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _settings(pg_url: str, redis_url: str, prefix: str, receiver: Receiver) -> dict[str, str]:
    return {
        "database_url": pg_url,
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "pusher_apps": NORTHWOOD_APP,
        "pusher_webhooks": f"{APP_ID}={receiver.url}",
        "presence_timeout_seconds": "2",
    }


def _start(make: Callable[..., ServerProcess], settings: dict[str, str]) -> list[ServerProcess]:
    first = make(**settings)
    first.cli("migrate")
    first.cli("seed-demo")
    return [first.start(), make(**settings).start()]


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, redis_url: str
) -> Iterator[tuple[list[ServerProcess], Receiver]]:
    """Two processes on one Redis and Postgres, shared by the tests that neither kill
    a process nor mind each other's channels (each uses its own)."""
    name = f"emx_test_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_admin_url, f'CREATE DATABASE "{name}"'))
    base = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    workdir = tmp_path_factory.mktemp("pusher-hooks")
    receiver = Receiver()
    servers: list[ServerProcess] = []

    def make(**settings: str) -> ServerProcess:
        server = ServerProcess(workdir, base_env(workdir, **settings))
        servers.append(server)
        return server

    try:
        settings = _settings(f"{base}/{name}", redis_url, f"t{secrets.token_hex(4)}", receiver)
        yield _start(make, settings), receiver
    finally:
        for server in servers:
            server.stop()
        receiver.close()
        asyncio.run(_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def named(events: list[dict[str, Any]], name: str, channel: str) -> list[dict[str, Any]]:
    return [e for e in events if e["name"] == name and e["channel"] == channel]


async def test_occupied_once_and_vacated_once_across_processes(
    shared: tuple[list[ServerProcess], Receiver],
) -> None:
    (a, b), receiver = shared
    async with raw_pusher(a) as first:
        await first.subscribed(PRIVATE, "nw-ada")
        await receiver.wait_for(lambda got: named(got, "channel_occupied", PRIVATE), 10)
        async with raw_pusher(b) as second:
            await second.subscribed(PRIVATE, "nw-ada")
            await asyncio.sleep(0.6)  # a second occupied would be batched and sent by now
        await asyncio.sleep(0.6)
        assert named(receiver.events(), "channel_vacated", PRIVATE) == []  # a still has it
    await receiver.wait_for(lambda got: named(got, "channel_vacated", PRIVATE), 10)
    await asyncio.sleep(0.6)
    events = receiver.events()
    assert len(named(events, "channel_occupied", PRIVATE)) == 1
    assert len(named(events, "channel_vacated", PRIVATE)) == 1
    # Signed as Pusher signs: HMAC-SHA256 of the body with the app secret.
    for headers, body in receiver.requests:
        assert headers["x-pusher-key"] == KEY
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-pusher-signature"], expected)
        assert json.loads(body)["time_ms"] > 0


async def test_members_added_and_removed_once_though_every_process_hears_them(
    shared: tuple[list[ServerProcess], Receiver],
) -> None:
    (a, b), receiver = shared
    async with raw_pusher(a) as ada, raw_pusher(b) as cy:
        await ada.subscribed(PRESENCE, "nw-ada")
        await cy.subscribed(PRESENCE, "nw-cy")
        await ada.expect("pusher_internal:member_added", PRESENCE)
        await receiver.wait_for(lambda got: len(named(got, "member_added", PRESENCE)) == 2, 10)
    await receiver.wait_for(lambda got: len(named(got, "member_removed", PRESENCE)) == 2, 10)
    await asyncio.sleep(0.6)
    events = receiver.events()
    added = named(events, "member_added", PRESENCE)
    removed = named(events, "member_removed", PRESENCE)
    assert sorted(e["user_id"] for e in added) == ["nw-ada", "nw-cy"]
    assert sorted(e["user_id"] for e in removed) == ["nw-ada", "nw-cy"]


async def test_a_killed_process_channels_are_vacated(
    make_server: Make, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    receiver = Receiver()
    try:
        a, b = _start(make_server, _settings(pg_url, redis_url, redis_prefix, receiver))
        await _killed(a, b, receiver)
    finally:
        receiver.close()


async def _killed(a: ServerProcess, b: ServerProcess, receiver: Receiver) -> None:
    async with raw_pusher(b) as doomed:
        await doomed.subscribed(PRIVATE, "nw-ada")
        await receiver.wait_for(lambda got: named(got, "channel_occupied", PRIVATE), 10)
        b.kill()  # SIGKILL: no release; its claim expires and a's reaper vacates it
        await receiver.wait_for(lambda got: named(got, "channel_vacated", PRIVATE), 15)
    assert len(named(receiver.events(), "channel_vacated", PRIVATE)) == 1
    assert a.process is not None and a.process.poll() is None


async def test_the_http_api_lists_occupied_channels_with_counts(
    shared: tuple[list[ServerProcess], Receiver],
) -> None:
    (a, b), _ = shared
    client = library(a)
    async with raw_pusher(a) as one, raw_pusher(b) as two, raw_pusher(b) as three:
        for socket, user in ((one, "nw-ada"), (two, "nw-ada"), (three, "nw-admin")):
            await socket.subscribed(LISTED_PRESENCE, user)
        await one.subscribed(LISTED_PRIVATE, "nw-ada")
        listed = await asyncio.to_thread(client.channels_info, "presence-", ["user_count"])
        assert listed["channels"] == {LISTED_PRESENCE: {"user_count": 2}}
        everything = await asyncio.to_thread(client.channels_info)
        assert set(everything["channels"]) == {LISTED_PRESENCE, LISTED_PRIVATE}
        info = await asyncio.to_thread(
            client.channel_info, LISTED_PRESENCE, ["user_count", "subscription_count"]
        )
        assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
    await asyncio.sleep(0.3)
    assert (await asyncio.to_thread(client.channels_info))["channels"] == {}
