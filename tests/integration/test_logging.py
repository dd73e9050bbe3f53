"""What a real server process writes to its log: one format for every line, and the
per-connection access lines only when asked for (``EDUMATRIX_ACCESS_LOG``)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from tests.gqlws import connect
from tests.server import ServerProcess, token

ACCEPTED = '"WebSocket /graphql" [accepted]'


async def _one_connection_and_one_request(server: ServerProcess) -> None:
    async with connect(server.ws_url) as ws:
        ack = await ws.init(token("nw-cy"))
        assert ack["type"] == "connection_ack"
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{server.url}/graphql", json={"query": "{ __typename }"})
        assert response.json() == {"data": {"__typename": "Query"}}


def _started(make_server: Callable[..., ServerProcess], **settings: str) -> ServerProcess:
    server = make_server(**settings)
    server.cli("migrate")
    server.cli("seed-demo")
    return server.start()


async def test_json_format_covers_uvicorns_lines_and_drops_per_connection_lines(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = _started(make_server, log_format="json")
    await _one_connection_and_one_request(server)
    server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, uvicorn's too
    events = [(r.get("logger"), r["event"]) for r in records]
    assert ("uvicorn.error", "Application startup complete.") in events
    assert any(r["event"] == "server.serving" and r["url"] == server.url for r in records)
    assert any(r["event"] == "server.ready" for r in records)
    assert not any(ACCEPTED in r["event"] or r["event"] == "connection open" for r in records)
    assert not any(r.get("logger") == "uvicorn.access" for r in records)


async def test_access_log_setting_logs_each_connection_and_request(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = _started(make_server, access_log="true")
    await _one_connection_and_one_request(server)
    server.stop()
    log = server.log_path.read_text()
    assert ACCEPTED in log
    assert "connection open" in log
    assert '"POST /graphql HTTP/1.1" 200' in log
