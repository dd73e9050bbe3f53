"""A WebSocket's token, from acceptance to its deadline, and refreshing it in-band.

The server checks a token with a leeway (``EDUMATRIX_JWT_LEEWAY_SECONDS``, 3 s
here to keep the waits short) and closes an accepted connection at the same
instant, ``exp`` plus the leeway: a client is either refused at ``connection_init``
or accepted until then. Refused for expiry on graphql-transport-ws means 4401,
which graphql-ws does not retry; before, a token inside the leeway was accepted
and closed at once, and graphql-ws's retry loop spun (each ``connection_ack``
resets its retry count). ``refreshConnectionToken`` moves the deadline without
dropping subscriptions, on both protocols.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import jwt
import pytest

from db.seed import demo_claims
from tests.gqlws import LEGACY_WS, TRANSPORT_WS, Closed, GraphQLWS, connect
from tests.integration.test_analytics_api import SERIES, window
from tests.integration.test_audit import rows, sqlite_url
from tests.integration.test_embedded_ws import (
    MATH_101,
    PROTOCOLS,
    SUBSCRIBE,
    _bad_tokens,
    error_codes,
    publish,
)
from tests.node_clients import run_node
from tests.server import TOKENS, ServerProcess, base_env, token

LEEWAY = 3
EARLY = 0.1  # the server's timer and this process's clock may differ by this much
LATE = 1.5  # a close may come this long after its deadline on a busy machine
REFRESH = """
mutation($token: String!) {
  refreshConnectionToken(token: $token) { expiresAt closesAt }
}"""
ME = "{ me { id } }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("token-expiry")
    process = ServerProcess(workdir, base_env(workdir, jwt_leeway_seconds=str(LEEWAY)))
    process.cli("migrate")
    process.cli("seed-demo")
    process.start()
    yield process
    process.stop()


def exp_of(raw: str) -> int:
    claims: dict[str, Any] = jwt.decode(raw, options={"verify_signature": False})
    return int(claims["exp"])


def deadline_of(raw: str) -> float:
    return exp_of(raw) + LEEWAY


async def execute(
    client: GraphQLWS, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run a query or mutation over the socket: its one result (other operations'
    messages are skipped), then its ``complete``."""
    op = await client.subscribe(query, variables)
    while True:
        message = await client.recv()
        if message.get("id") != op:
            continue
        if message["type"] == "error":  # refused before execution
            return {"errors": message["payload"]}
        assert message["type"] in ("next", "data"), message
        complete = await client.recv()
        assert complete == {"id": op, "type": "complete"}, complete
        result: dict[str, Any] = message["payload"]
        return result


async def wait_until(when: float) -> None:
    await asyncio.sleep(max(when - time.time(), 0.0))


async def closed_at(client: GraphQLWS, wait: float) -> tuple[Closed, float]:
    """Read until the server closes the socket; the close and when it came."""
    with pytest.raises(Closed) as closed:
        while True:
            await client.recv(wait=wait)
    return closed.value, time.time()


@PROTOCOLS
async def test_connection_lives_until_exp_plus_leeway(server: ServerProcess, protocol: str) -> None:
    short = token("nw-cy", ttl=1)
    deadline = deadline_of(short)
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(short))["type"] == "connection_ack"
        op = await client.subscribe(SUBSCRIBE, {"name": MATH_101})
        await wait_until(exp_of(short) + 0.3)  # past exp, inside the leeway
        sent = await publish(server, "nw-ada", MATH_101, "after exp")
        message = await client.recv()
        assert message["id"] == op, message
        assert message["payload"]["data"]["channel"]["announcement"]["id"] == sent["id"]
        close, at = await closed_at(client, wait=deadline - time.time() + LATE)
    assert (close.code, close.reason) == (4403, "token expired")
    assert deadline - EARLY <= at <= deadline + LATE, (at, deadline)


@PROTOCOLS
async def test_token_inside_the_leeway_is_accepted_until_the_deadline(
    server: ServerProcess, protocol: str
) -> None:
    stale = token("nw-cy", ttl=0)  # exp has passed (or passes within the second)
    deadline = deadline_of(stale)
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(stale))["type"] == "connection_ack"
        close, at = await closed_at(client, wait=deadline - time.time() + LATE)
    assert (close.code, close.reason) == (4403, "token expired")
    assert deadline - EARLY <= at, (at, deadline)


async def test_expired_token_is_refused_at_init(server: ServerProcess) -> None:
    expired = token("nw-cy", ttl=-(LEEWAY + 2))
    async with connect(server.ws_url, TRANSPORT_WS) as client:
        with pytest.raises(Closed) as closed:
            await client.init(expired)
    assert (closed.value.code, closed.value.reason) == (4401, "token expired")
    async with connect(server.ws_url, LEGACY_WS) as client:
        error = await client.init(expired)
        assert error == {
            "type": "connection_error",
            "payload": {"message": "token expired", "code": "FORBIDDEN"},
        }
        with pytest.raises(Closed) as closed:
            await client.recv()
    assert closed.value.code == 4403


def _graphql_ws(server: ServerProcess, raw: str) -> dict[str, Any]:
    report: dict[str, Any] = run_node(
        "graphql_ws_expiry.mjs", server.ws_url, raw, MATH_101, "5", timeout=60
    )
    assert not report.get("timedOut"), report
    return report


async def test_graphql_ws_gives_up_on_an_expired_token(server: ServerProcess) -> None:
    report = await asyncio.to_thread(_graphql_ws, server, token("nw-cy", ttl=-(LEEWAY + 2)))
    assert (report["connecting"], report["connected"]) == (1, 0), report
    assert [(c["code"], c["reason"]) for c in report["closes"]] == [(4401, "token expired")]
    assert report["outcome"]["error"]["code"] == 4401, report


async def test_graphql_ws_closed_once_at_the_deadline(server: ServerProcess) -> None:
    """A token inside the leeway: accepted, closed once with 4403 at the deadline;
    graphql-ws retries that (a 4403 may mean "come back with a new token"), the same
    token is refused with 4401 and it stops. Before, with retryWait at 100 ms, it
    was accepted and closed again ~10 times a second until the leeway ran out."""
    stale = token("nw-cy", ttl=0)
    deadline = deadline_of(stale)
    report = await asyncio.to_thread(_graphql_ws, server, stale)
    codes = [(c["code"], c["reason"]) for c in report["closes"]]
    assert codes == [(4403, "token expired"), (4401, "token expired")], report
    assert (report["connecting"], report["connected"]) == (2, 1), report
    assert report["closes"][0]["at"] >= deadline - EARLY, (report, deadline)
    assert report["outcome"]["error"]["code"] == 4401, report


@PROTOCOLS
async def test_refresh_keeps_subscriptions_past_the_old_deadline(
    server: ServerProcess, protocol: str
) -> None:
    short = token("nw-cy", ttl=1)
    fresh = token("nw-cy", ttl=600)
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(short))["type"] == "connection_ack"
        op = await client.subscribe(SUBSCRIBE, {"name": MATH_101})
        result = await execute(client, REFRESH, {"token": fresh})
        assert "errors" not in result, result
        refreshed = result["data"]["refreshConnectionToken"]
        assert datetime.fromisoformat(refreshed["expiresAt"]).timestamp() == exp_of(fresh)
        assert datetime.fromisoformat(refreshed["closesAt"]).timestamp() == deadline_of(fresh)

        await wait_until(deadline_of(short) + 1.0)
        sent = await publish(server, "nw-ada", MATH_101, "after the old deadline")
        message = await client.recv()
        assert message["id"] == op, message
        assert message["payload"]["data"]["channel"]["announcement"]["id"] == sent["id"]
        assert await execute(client, ME) == {"data": {"me": {"id": "nw-cy"}}}


def _narrower(user: str) -> str:
    claims = {**demo_claims(user), "classrooms": ()}
    return TOKENS.mint(**claims, ttl_seconds=600)


REFUSALS = {
    "other-subject": (lambda: token("nw-dee", ttl=600), "FORBIDDEN"),
    "fewer-classrooms": (lambda: _narrower("nw-cy"), "FORBIDDEN"),
    "expired": (lambda: token("nw-cy", ttl=-(LEEWAY + 2)), "UNAUTHENTICATED"),
    "wrong-signature": (lambda: _bad_tokens()["wrong-signature"] or "", "UNAUTHENTICATED"),
    "garbage": (lambda: "not-a-jwt", "UNAUTHENTICATED"),
}


@PROTOCOLS
@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_refresh_keeps_the_current_token(
    server: ServerProcess, protocol: str, case: str
) -> None:
    make, code = REFUSALS[case]
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
        result = await execute(client, REFRESH, {"token": make()})
        assert result["data"] == {"refreshConnectionToken": None}, result  # a nullable mutation
        assert error_codes({"payload": result}) == [code], result
        assert await execute(client, ME) == {"data": {"me": {"id": "nw-cy"}}}


@PROTOCOLS
async def test_refused_refresh_leaves_the_original_deadline(
    server: ServerProcess, protocol: str
) -> None:
    short = token("nw-cy", ttl=1)
    deadline = deadline_of(short)
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(short))["type"] == "connection_ack"
        await client.subscribe(SUBSCRIBE, {"name": MATH_101})
        result = await execute(client, REFRESH, {"token": token("nw-dee", ttl=600)})
        assert error_codes({"payload": result}) == ["FORBIDDEN"], result
        close, at = await closed_at(client, wait=deadline - time.time() + LATE)
    assert (close.code, close.reason) == (4403, "token expired")
    assert deadline - EARLY <= at <= deadline + LATE, (at, deadline)


def _refreshes_counted(server: ServerProcess) -> int:
    variables: dict[str, object] = {"i": "northwood", **window()}
    result = server.graphql(SERIES, variables, as_user="nw-admin")
    top = {c["key"]: c["count"] for c in result["data"]["topEvents"]}  # type: ignore[index]
    return int(top.get("auth.refresh", 0))


async def test_refreshes_are_audited_and_emitted(server: ServerProcess) -> None:
    """One row per attempt, on the connection's request id: ``ok``, ``denied`` for
    another holder's token, ``failed`` for a token that does not verify; and an
    ``auth.refresh`` event for the one that succeeded."""
    before = -1
    while (now := await asyncio.to_thread(_refreshes_counted, server)) != before:
        before = now  # earlier tests' events have all been counted once it holds still
        await asyncio.sleep(0.3)
    async with connect(server.ws_url) as client:
        assert (await client.init(token("nw-bo")))["type"] == "connection_ack"
        fresh = f"Bearer {token('nw-bo', ttl=600)}"  # the prefix connection_init uses is fine
        ok = await execute(client, REFRESH, {"token": fresh})
        assert "errors" not in ok, ok
        for raw in (token("nw-dee", ttl=600), "not-a-jwt"):
            await execute(client, REFRESH, {"token": raw})
    url = sqlite_url(server)
    found = await asyncio.to_thread(rows, url, action="refreshConnectionToken", actor_id="nw-bo")
    assert sorted(r["outcome"] for r in found) == ["denied", "failed", "ok"], found
    assert len({r["request_id"] for r in found}) == 1, found
    assert all(r["target"] == "websocket" for r in found), found
    counted = before
    for _ in range(50):
        counted = await asyncio.to_thread(_refreshes_counted, server)
        if counted > before:
            break
        await asyncio.sleep(0.1)
    assert counted == before + 1, (before, counted)


@pytest.mark.parametrize("user", ["nw-cy", None])
def test_refresh_over_http_is_bad_input(server: ServerProcess, user: str | None) -> None:
    result = server.graphql(REFRESH, {"token": token("nw-cy")}, as_user=user)
    assert result["data"] == {"refreshConnectionToken": None}, result
    assert error_codes({"payload": result}) == ["BAD_INPUT"], result
