"""Document limits on a real server: a fragment bomb is refused at once with its
code, over every transport, and the server stays responsive meanwhile.

The bomb is the attacker's 638-byte anonymous request: with Strawberry's depth and
alias limiters it blocked the event loop for ~20 s (each level 10x more)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, connect
from tests.integration.test_embedded_ws import error_codes
from tests.server import ServerProcess, token


def bomb(name: str = "", *, on: str = "Me { id }", root: str = "query { me") -> str:
    """Seven levels of fragments, each spreading the previous one ten times; ``root``
    opens the operation down to where the last fragment is spread."""
    kind = on.split()[0]
    fragments = [f"fragment F0 on {on}"]
    for level in range(1, 8):
        fragments.append(f"fragment F{level} on {kind} {{ {f'...F{level - 1} ' * 10}}}")
    keyword, rest = root.split(" ", 1)
    return "\n".join([*fragments, f"{keyword} {name} {rest} {{ ...F7 }} }}"])


def codes(body: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in body.get("errors", [])]


@pytest.fixture(params=["default", "stock paths"])
def server(
    request: pytest.FixtureRequest, make_server: Callable[..., ServerProcess]
) -> ServerProcess:
    settings = {} if request.param == "default" else {"fast_paths": "false"}
    started = make_server(**settings)
    started.cli("migrate")
    return started.start()


class HealthWatch:
    """Polls /healthz from a thread while the test runs; keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(0.05):
                started = time.perf_counter()
                client.get(f"{self.url}/healthz").raise_for_status()
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.answers += 1

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=35)


@pytest.fixture
def health(server: ServerProcess) -> Iterator[HealthWatch]:
    with HealthWatch(server.url) as watch:
        yield watch


def test_bomb_over_http_is_refused_at_once(server: ServerProcess, health: HealthWatch) -> None:
    url = f"{server.url}/graphql"
    assert len(bomb().encode()) <= 640
    # New operation names each time, as the attacker did to miss the caches.
    for n in range(5):
        started = time.perf_counter()
        response = httpx.post(url, json={"query": bomb(f"B{n}")}, timeout=10)
        assert time.perf_counter() - started < 3.0  # was ~20 s (~40 s on the fast path)
        assert response.status_code == 200
        assert codes(response.json()) == ["QUERY_TOO_COMPLEX"]
    got = httpx.get(url, params={"query": bomb("ByGet")}, timeout=10)
    assert codes(got.json()) == ["QUERY_TOO_COMPLEX"]
    time.sleep(0.3)  # a few more health checks after the last bomb
    assert health.answers >= 3 and health.slowest < 2.0

    # The ordinary limits carry their codes too, with and without a token.
    # No path of this schema is that deep, so graphql-core refuses the fields too.
    deep = "{ me { " + "institution { " * 11 + "id" + " }" * 12 + " }"
    aliases = "{ " + " ".join(f"a{n}: me {{ id }}" for n in range(16)) + " }"
    for headers in ({}, {"Authorization": f"Bearer {token('nw-cy')}"}):
        for query, code in ((deep, "QUERY_TOO_DEEP"), (aliases, "TOO_MANY_ALIASES")):
            body = httpx.post(url, json={"query": query}, headers=headers, timeout=10).json()
            assert code in codes(body), body


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_bomb_over_websocket_is_refused_with_its_code(
    server: ServerProcess, protocol: str
) -> None:
    async with connect(server.ws_url, protocol) as client:
        ack = await client.init(token("nw-cy"))
        assert ack["type"] == "connection_ack", ack
        channel = 'channel(name: "institution:northwood")'
        subscription = bomb(on="ChannelEvent { offset }", root=f"subscription {{ {channel}")
        aliased = " ".join(f"a{n}: offset" for n in range(16))
        refusals = [(subscription, "QUERY_TOO_COMPLEX")]
        # Legacy graphql-ws runs subscriptions only (a query is "Unexpected error.").
        if protocol == TRANSPORT_WS:
            refusals.append((bomb(), "QUERY_TOO_COMPLEX"))
        refusals.append((f"subscription {{ {channel} {{ {aliased} }} }}", "TOO_MANY_ALIASES"))
        for query, code in refusals:
            started = time.perf_counter()
            await client.subscribe(query)
            message = await client.recv(wait=10.0)
            assert time.perf_counter() - started < 3.0  # was ~20 s
            assert message["type"] == "error", message
            assert error_codes(message) == [code], message
