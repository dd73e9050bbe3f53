"""Subscriptions over HTTP: graphql-sse in both modes and multipart/mixed, with the
clients apps use (graphql-sse, Apollo Client) and with raw HTTP for what a client
library hides: admission limits, token expiry, shutdown, single-connection rules.

Every stream must end with a reason (an error with a code, then ``complete``),
never a bare end, and ``since`` must replay exactly what was missed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.node_clients import NodeProcess
from tests.server import ServerProcess, stock_only, token

MATH_101 = "institution:northwood:classroom:nw-math-101"
SCI_201 = "institution:northwood:classroom:nw-sci-201"
SUBSCRIBE = """subscription ($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) { offset epoch kind announcement { title } }
}"""
PUBLISH = """mutation ($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b", priority: LOW}) { id }
}"""
POSITION = "query ($name: String!) { channelPosition(name: $name) { offset epoch } }"
SSE = {"Accept": "text/event-stream"}
TOKEN_HEADER = "X-GraphQL-Event-Stream-Token"


def publish(server: ServerProcess, title: str, channel: str = MATH_101) -> None:
    result = server.graphql(PUBLISH, {"channel": channel, "title": title}, as_user="nw-ada")
    assert "errors" not in result, result


def position(server: ServerProcess, channel: str = MATH_101) -> dict[str, Any]:
    result = server.graphql(POSITION, {"name": channel}, as_user="nw-cy")
    return result["data"]["channelPosition"]  # type: ignore[index,no-any-return]


def own_server(make_server: Any, **settings: str) -> ServerProcess:
    """A server of its own (migrated, demo data) with ``settings``."""
    server: ServerProcess = make_server(**settings)
    server.cli("migrate")
    server.cli("seed-demo")
    return server.start()


def auth(user: str, *, ttl: int = 600) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, ttl=ttl)}"}


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of an SSE response; comments (heartbeats) are skipped."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line:
            if data or event != "message":
                yield event, json.loads(data) if data else None
            event, data = "message", ""


@asynccontextmanager
async def sse(
    server: ServerProcess, user: str | None, body: dict[str, Any], *, ttl: int = 600
) -> AsyncIterator[httpx.Response]:
    headers = {**SSE, **(auth(user, ttl=ttl) if user else {})}
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", f"{server.url}/graphql", json=body, headers=headers) as response,
    ):
        yield response


async def collect(response: httpx.Response, limit: float = 20.0) -> list[tuple[str, Any]]:
    """Every event until the server ends the stream (bounded by ``limit``)."""
    got: list[tuple[str, Any]] = []

    async def read() -> None:
        async for item in events(response):
            got.append(item)

    await asyncio.wait_for(read(), limit)
    return got


def codes(payload: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in payload.get("errors") or []]


@pytest.mark.parametrize("client", ["sse-distinct", "sse-single", "apollo-multipart"])
def test_client_resumes_and_receives_live_exactly_once(
    embedded_server: ServerProcess, client: str
) -> None:
    """A real client subscribes with ``since``: the message published before it
    connected is replayed, the two after arrive live, in order, once each."""
    start = position(embedded_server)
    stamp = f"{client}-{time.monotonic_ns()}"
    publish(embedded_server, f"{stamp}-0")  # missed: must be replayed
    node = NodeProcess(
        "sse_client.mjs",
        client,
        f"{embedded_server.url}/graphql",
        token("nw-cy"),
        MATH_101,
        json.dumps(start),
        "3",
    )
    try:
        node.until("connected")
        publish(embedded_server, f"{stamp}-1")
        publish(embedded_server, f"{stamp}-2")
        summary = node.until("how")
    finally:
        node.stop()
    assert summary["how"] == "count", summary
    got = [e["data"]["channel"] for e in summary["events"]]
    assert [g["announcement"]["title"] for g in got] == [f"{stamp}-{i}" for i in range(3)]
    offsets = [g["offset"] for g in got]
    assert offsets == list(range(int(start["offset"]) + 1, int(start["offset"]) + 4))
    assert {g["epoch"] for g in got} == {start["epoch"]}


async def test_query_and_mutation_over_sse_then_complete(embedded_server: ServerProcess) -> None:
    async with sse(embedded_server, "nw-ada", {"query": "{ me { id } }"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        got = await collect(response)
    assert got == [("next", {"data": {"me": {"id": "nw-ada"}}}), ("complete", None)]
    body = {"query": PUBLISH, "variables": {"channel": MATH_101, "title": "over sse"}}
    async with sse(embedded_server, "nw-ada", body) as response:
        got = await collect(response)
    assert [kind for kind, _ in got] == ["next", "complete"]
    assert got[0][1]["data"]["publishAnnouncement"]["id"]


@pytest.mark.parametrize(
    ("user", "channel", "code"),
    [(None, MATH_101, "UNAUTHENTICATED"), ("nw-dee", MATH_101, "FORBIDDEN")],
)
async def test_refused_subscription_ends_with_its_code(
    embedded_server: ServerProcess, user: str | None, channel: str, code: str
) -> None:
    body = {"query": SUBSCRIBE, "variables": {"name": channel}}
    async with sse(embedded_server, user, body) as response:
        got = await collect(response)
    assert [kind for kind, _ in got] == ["next", "complete"], got
    assert codes(got[0][1]) == [code]


async def test_invalid_document_is_a_400_with_its_code(embedded_server: ServerProcess) -> None:
    body = {"query": "subscription { channel(name: 1) { nope } }"}
    async with sse(embedded_server, "nw-cy", body) as response:
        assert response.status_code == 400
        payload = json.loads(await response.aread())
    assert "GRAPHQL_VALIDATION_FAILED" in codes(payload)


async def test_stream_ends_when_the_token_expires(make_server: Any) -> None:
    """At the deadline (exp + leeway, as the token check) the stream ends with
    UNAUTHENTICATED, then complete: the client knows to come back with a new token."""
    server = own_server(make_server, jwt_leeway_seconds="0")
    body = {"query": SUBSCRIBE, "variables": {"name": MATH_101}}
    started = time.monotonic()
    async with sse(server, "nw-cy", body, ttl=2) as response:
        got = await collect(response)
    assert [kind for kind, _ in got] == ["next", "complete"], got
    assert codes(got[0][1]) == ["UNAUTHENTICATED"]
    assert got[0][1]["errors"][0]["message"] == "token expired"
    assert time.monotonic() - started < 10


async def test_connection_and_subscription_limits_apply(make_server: Any) -> None:
    server = own_server(make_server, max_connections_per_subject="1")
    body = {"query": SUBSCRIBE, "variables": {"name": MATH_101}}
    async with sse(server, "nw-cy", body) as first:
        assert first.status_code == 200
        async with sse(server, "nw-cy", body) as second:
            assert second.status_code == 429
            payload = json.loads(await second.aread())
        assert codes(payload) == ["RATE_LIMITED"]
    # The slot is released when the stream ends.
    await asyncio.sleep(0.3)
    async with sse(server, "nw-cy", {"query": "{ me { id } }"}) as again:
        assert again.status_code == 200
        assert [kind for kind, _ in await collect(again)] == ["next", "complete"]


async def test_subject_subscription_cap_counts_http_streams(make_server: Any) -> None:
    server = own_server(make_server, max_subscriptions_per_subject="1")
    body = {"query": SUBSCRIBE, "variables": {"name": MATH_101}}
    async with sse(server, "nw-cy", body) as first:
        assert first.status_code == 200
        await asyncio.sleep(0.3)  # the first is executing (counted)
        async with sse(server, "nw-cy", body) as second:
            assert second.status_code == 429
            payload = json.loads(await second.aread())
    assert codes(payload) == ["RATE_LIMITED"]


async def test_shutdown_ends_streams_with_a_code(make_server: Any) -> None:
    """SIGTERM: every open stream gets SHUTTING_DOWN then complete, and the server
    exits instead of waiting for the clients to leave."""
    server = own_server(make_server)
    body = {"query": SUBSCRIBE, "variables": {"name": MATH_101}}
    async with sse(server, "nw-cy", body) as response:
        assert response.status_code == 200
        await asyncio.sleep(0.3)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGTERM)
        got = await collect(response)
    assert [kind for kind, _ in got] == ["next", "complete"], got
    assert codes(got[0][1]) == ["SHUTTING_DOWN"]
    # uvicorn re-raises the captured SIGTERM once its graceful shutdown is done.
    assert await asyncio.to_thread(server.process.wait, 15) == -signal.SIGTERM
    assert "Application shutdown complete" in server.log()


async def test_single_connection_rules(embedded_server: ServerProcess) -> None:
    """Reservations need a token and belong to their subject; one stream each;
    operations need an id; DELETE stops one without touching the others."""
    url = f"{embedded_server.url}/graphql"
    async with httpx.AsyncClient(timeout=30) as client:
        anonymous = await client.put(url)
        assert anonymous.status_code == 401
        assert codes(anonymous.json()) == ["UNAUTHENTICATED"]
        reserved = await client.put(url, headers=auth("nw-cy"))
        assert reserved.status_code == 201
        ticket = {TOKEN_HEADER: reserved.text}

        stolen = await client.post(
            url, json={"query": "{ me { id } }"}, headers={**ticket, **auth("nw-ada")}
        )
        assert stolen.status_code == 403
        async with client.stream("GET", url, headers={**SSE, **ticket, **auth("nw-cy")}) as stream:
            assert stream.status_code == 200
            second = await client.get(url, headers={**SSE, **ticket, **auth("nw-cy")})
            assert second.status_code == 409
            no_id = await client.post(
                url, json={"query": "{ me { id } }"}, headers={**ticket, **auth("nw-cy")}
            )
            assert no_id.status_code == 400
            for op in ("a", "b"):
                sub = {
                    "query": SUBSCRIBE,
                    "variables": {"name": MATH_101},
                    "extensions": {"operationId": op},
                }
                started = await client.post(url, json=sub, headers={**ticket, **auth("nw-cy")})
                assert started.status_code == 202, started.text
            await asyncio.sleep(0.3)
            stopped = await client.delete(
                url, params={"operationId": "a"}, headers={**ticket, **auth("nw-cy")}
            )
            assert stopped.status_code == 200
            await asyncio.to_thread(publish, embedded_server, "after delete")
            reader = events(stream)
            kind, data = await asyncio.wait_for(anext(reader), 10)
        assert kind == "next"
        assert data["id"] == "b"
        assert data["payload"]["data"]["channel"]["announcement"]["title"] == "after delete"
        # The stream is gone and so is its reservation.
        await asyncio.sleep(0.3)
        gone = await client.post(
            url,
            json={"query": "{ me { id } }", "extensions": {"operationId": "c"}},
            headers={**ticket, **auth("nw-cy")},
        )
        assert gone.status_code == 404


def test_subscription_without_a_stream_says_how_to_get_one(embedded_server: ServerProcess) -> None:
    """A plain JSON POST cannot carry a subscription: a 400 that names the ways that
    can, not Strawberry's masked "Unexpected error."."""
    response = httpx.post(
        f"{embedded_server.url}/graphql",
        json={"query": SUBSCRIBE, "variables": {"name": MATH_101}},
        headers=auth("nw-cy"),
    )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "text/event-stream" in error["message"]


def gauge(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_streams_of_one_channel_share_a_multiplexer_group(make_server: Any) -> None:
    """With the multiplex fast path on, SSE and multipart subscribers of one document
    join one group (executed and encoded once per message), beside a WebSocket's
    operations; with it off they run Strawberry's path. Both ways deliver the same."""
    server = own_server(make_server)
    body = {"query": SUBSCRIBE, "variables": {"name": MATH_101}}
    multipart = {"Accept": 'multipart/mixed;subscriptionSpec="1.0",application/json'}
    async with (
        sse(server, "nw-cy", body) as one,
        sse(server, "nw-cy", body) as two,
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST", f"{server.url}/graphql", json=body, headers={**multipart, **auth("nw-cy")}
        ) as three,
    ):
        assert (one.status_code, two.status_code, three.status_code) == (200, 200, 200)
        await asyncio.sleep(0.5)
        groups = gauge(server, "edumatrix_multiplex_groups")
        assert gauge(server, "edumatrix_http_streams") >= 1
        await asyncio.to_thread(publish, server, "shared")
        first = await asyncio.wait_for(anext(events(one)), 10)
        second = await asyncio.wait_for(anext(events(two)), 10)
        part = b""
        async for chunk in three.aiter_bytes():
            part += chunk
            if b'"shared"' in part:
                break
    assert groups == (0 if stock_only() else 1)
    for kind, data in (first, second):
        assert kind == "next"
        assert data["data"]["channel"]["announcement"]["title"] == "shared"
    assert b'{"payload":{"data":{"channel":' in part


async def test_a_stream_that_stops_reading_ends_with_slow_consumer(make_server: Any) -> None:
    """A subscriber whose backlog reaches EDUMATRIX_SUBSCRIBER_QUEUE_SIZE is ended
    with SLOW_CONSUMER (then complete) instead of growing memory or holding others up;
    a reading subscriber of the same channel gets every message."""
    # Loopback's kernel buffers take up to 4 MB before the server's writes back up:
    # publish ~6 MB, 50 announcements of ~10 KB per request.
    server = own_server(make_server, subscriber_queue_size="4", max_aliases="60")
    body = json.dumps({"query": WITH_BODY, "variables": {"name": MATH_101}}).encode()
    sock = socket.socket()  # a client that reads nothing
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    request = (
        f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {token('nw-cy')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(request + body)
    await writer.drain()
    await asyncio.sleep(0.5)
    batches, per_batch = 12, 50
    total = batches * per_batch
    fields = " ".join(
        f'p{i}: publishAnnouncement(input: {{channel: $channel, title: "m{i}", body: $body,'
        " priority: LOW}) { id }"
        for i in range(per_batch)
    )
    publish_many = f"mutation ($channel: String!, $body: String!) {{ {fields} }}"
    variables = {"channel": MATH_101, "body": "x" * 9900}
    async with sse(server, "nw-ada", {"query": WITH_BODY, "variables": {"name": MATH_101}}) as ok:
        await asyncio.sleep(0.3)
        reading = asyncio.create_task(collect_titles(ok, total))
        for _ in range(batches):
            result = await asyncio.to_thread(
                server.graphql, publish_many, variables, as_user="nw-ada"
            )
            assert "errors" not in result, result
        titles = await asyncio.wait_for(reading, 60)
    assert titles == [f"m{i}" for _ in range(batches) for i in range(per_batch)]
    # Now read what the stalled stream was sent: it ends with SLOW_CONSUMER.
    raw = b""
    try:
        async with asyncio.timeout(30):
            while b"event: complete" not in raw:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                raw += chunk
    except TimeoutError:
        tail = raw[-300:]
        raise AssertionError(f"no complete in {len(raw)} bytes, ending {tail!r}") from None
    writer.close()
    # The last next says why, then complete; the stream never got all messages.
    assert raw.rindex(b'"SLOW_CONSUMER"') < raw.index(b"event: complete")
    assert raw.count(b'"title":"m') < total


WITH_BODY = """subscription ($name: String!) {
  channel(name: $name) { offset announcement { title body } }
}"""


async def collect_titles(response: httpx.Response, count: int) -> list[str]:
    titles: list[str] = []
    async for kind, data in events(response):
        assert kind == "next", (kind, data)
        titles.append(data["data"]["channel"]["announcement"]["title"])
        if len(titles) == count:
            break
    return titles


async def test_heartbeats_and_unopened_reservations(make_server: Any) -> None:
    """An idle stream gets heartbeats (SSE comments; multipart empty parts) at the
    set interval; a reservation nobody opens is dropped and its slot freed."""
    server = own_server(
        make_server,
        stream_heartbeat_seconds="0.3",
        stream_reservation_seconds="1",
        max_connections_per_subject="1",
    )
    url = f"{server.url}/graphql"
    body = {"query": SUBSCRIBE, "variables": {"name": MATH_101}}
    async with sse(server, "nw-cy", body) as idle:
        lines: list[str] = []

        async def read() -> None:
            async for line in idle.aiter_lines():
                lines.append(line)
                if sum(1 for x in lines if x.startswith(":")) >= 2:
                    return

        await asyncio.wait_for(read(), 10)
    assert sum(1 for x in lines if x.startswith(":")) >= 2
    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.sleep(0.3)  # the idle stream's slot is released
        first = await client.put(url, headers=auth("nw-cy"))
        assert first.status_code == 201
        held = await client.put(url, headers=auth("nw-cy"))
        assert held.status_code == 429  # the reservation holds the only slot
        await asyncio.sleep(1.5)
        opened = await client.get(url, headers={**SSE, TOKEN_HEADER: first.text, **auth("nw-cy")})
        assert opened.status_code == 404  # dropped
        again = await client.put(url, headers=auth("nw-cy"))
        assert again.status_code == 201  # and its slot freed
