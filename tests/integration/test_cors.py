"""Cross-origin browsers, from one setting: ``EDUMATRIX_ALLOWED_ORIGINS`` admits an
origin's HTTP requests (CORS, preflight included) and its WebSocket handshakes;
an origin not on the list gets neither; with the list empty no cross-origin page
gets either, while same-origin pages and non-browser clients (no ``Origin``) always
work. Against a real server process, with the headers a browser sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.typing import Origin, Subprotocol

from tests.server import ServerProcess, base_env, token

APP = "http://app.school.example:5173"
OTHER = "http://evil.example"
QUERY = {"query": "{ me { id } }"}
PROTOCOL = [Subprotocol("graphql-transport-ws")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("cors")
    found = ServerProcess(workdir, base_env(workdir, allowed_origins=f"{APP}, http://b.example"))
    found.cli("migrate")
    found.cli("seed-demo")
    found.start()
    yield found
    found.stop()


def preflight(server: ServerProcess, origin: str) -> httpx.Response:
    return httpx.options(
        f"{server.url}/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_an_allowed_origins_preflight_and_query_get_cors_headers(server: ServerProcess) -> None:
    allowed = preflight(server, APP)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers  # bearer tokens only
    response = httpx.post(
        f"{server.url}/graphql",
        json=QUERY,
        headers={"Origin": APP, "Authorization": f"Bearer {token('nw-cy')}"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert response.json() == {"data": {"me": {"id": "nw-cy"}}}


def test_an_origin_not_on_the_list_gets_no_cors_headers(server: ServerProcess) -> None:
    refused = preflight(server, OTHER)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    # The request itself still runs (CORS is the browser's check), but without the
    # header a browser does not hand the answer to the page.
    response = httpx.post(f"{server.url}/graphql", json=QUERY, headers={"Origin": OTHER})
    assert "access-control-allow-origin" not in response.headers


async def test_websocket_handshakes_follow_the_same_list(server: ServerProcess) -> None:
    async with websockets.connect(
        server.ws_url,
        subprotocols=PROTOCOL,
        origin=Origin(APP),
    ) as ws:
        assert ws.subprotocol == "graphql-transport-ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(
            server.ws_url,
            subprotocols=PROTOCOL,
            origin=Origin(OTHER),
        )
    assert refused.value.response.status_code == 403


def test_with_no_origins_listed_cross_origin_pages_get_no_cors(
    embedded_server: ServerProcess,
) -> None:
    """The default: same-origin pages and clients without ``Origin`` only."""
    assert preflight(embedded_server, APP).status_code == 405
    response = httpx.post(f"{embedded_server.url}/graphql", json=QUERY, headers={"Origin": APP})
    assert "access-control-allow-origin" not in response.headers


async def test_with_no_origins_listed_cross_origin_websockets_are_refused(
    embedded_server: ServerProcess,
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(
            embedded_server.ws_url,
            subprotocols=PROTOCOL,
            origin=Origin(APP),
        )
    assert refused.value.response.status_code == 403
    async with websockets.connect(
        embedded_server.ws_url,
        subprotocols=PROTOCOL,
    ) as ws:  # no Origin: a service, the CLI
        assert ws.subprotocol == "graphql-transport-ws"


async def test_a_star_admits_any_origin(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("cors-any")
    server = ServerProcess(workdir, base_env(workdir, allowed_origins="*"))
    server.cli("migrate")
    server.start()
    try:
        allowed = await asyncio.to_thread(preflight, server, OTHER)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "*"
        async with websockets.connect(
            server.ws_url, subprotocols=PROTOCOL, origin=Origin(OTHER)
        ) as ws:
            assert ws.subprotocol == "graphql-transport-ws"
    finally:
        server.stop()


def test_single_connection_sse_preflight_is_allowed(server: ServerProcess) -> None:
    """graphql-sse's single connection mode reserves with PUT, stops with DELETE and
    sends its stream token in a header: a page on an allowed origin may do all three."""
    for method in ("PUT", "DELETE"):
        allowed = httpx.options(
            f"{server.url}/graphql",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, x-graphql-event-stream-token",
            },
        )
        assert allowed.status_code == 200, (method, allowed.text)
        assert method in allowed.headers["access-control-allow-methods"]
        headers = allowed.headers["access-control-allow-headers"].lower()
        assert "x-graphql-event-stream-token" in headers
    reserved = httpx.put(
        f"{server.url}/graphql",
        headers={"Origin": APP, "Authorization": f"Bearer {token('nw-cy')}"},
    )
    assert reserved.status_code == 201
    assert reserved.headers["access-control-allow-origin"] == APP
