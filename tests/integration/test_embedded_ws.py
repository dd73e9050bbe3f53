"""The whole path in embedded mode, over real WebSockets in both protocols:
HTTP mutation -> SQLite -> memory bus -> GraphQL subscription."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.auth import TokenService
from streams.acl import Role
from tests.gqlws import LEGACY_WS, TRANSPORT_WS, Closed, GraphQLWS, connect
from tests.server import SECRET, ServerProcess, token

SUBSCRIBE = """
subscription($name: String!) {
  channel(name: $name) {
    offset epoch channel kind publishedAt recovered
    announcement { id title body priority }
  }
}"""
PUBLISH = """
mutation($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "body", priority: HIGH}) {
    id title
  }
}"""
MATH_101 = "institution:northwood:classroom:nw-math-101"
SCI_201 = "institution:northwood:classroom:nw-sci-201"
PROTOCOLS = pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])


async def publish(server: ServerProcess, user: str, channel: str, title: str) -> dict[str, Any]:
    result = await asyncio.to_thread(
        server.graphql, PUBLISH, {"channel": channel, "title": title}, as_user=user
    )
    assert "errors" not in result, result
    data: dict[str, Any] = result["data"]  # type: ignore[assignment]
    return data["publishAnnouncement"]  # type: ignore[no-any-return]


async def subscribed(client: GraphQLWS, user: str, channel: str) -> str:
    ack = await client.init(token(user))
    assert ack["type"] == "connection_ack", ack
    op = await client.subscribe(SUBSCRIBE, {"name": channel})
    # The first position query makes sure the subscription is live before we publish.
    await asyncio.sleep(0.2)
    return op


def error_codes(message: dict[str, Any]) -> list[str]:
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload.get("errors", [payload])
    return [e.get("extensions", {}).get("code") for e in errors]


@PROTOCOLS
async def test_student_receives_teacher_announcement(
    embedded_server: ServerProcess, protocol: str
) -> None:
    async with connect(embedded_server.ws_url, protocol) as student:
        await subscribed(student, "nw-cy", MATH_101)
        first = await publish(embedded_server, "nw-ada", MATH_101, "Quiz on Friday")
        second = await publish(embedded_server, "nw-ada", MATH_101, "Bring a calculator")

        one = (await student.next_data())["channel"]
        two = (await student.next_data())["channel"]

    assert one["announcement"] == {
        "id": first["id"],
        "title": "Quiz on Friday",
        "body": "body",
        "priority": "HIGH",
    }
    assert one["channel"] == MATH_101 and one["kind"] == "announcement"
    assert one["recovered"] is True
    assert two["announcement"]["id"] == second["id"]
    assert two["offset"] == one["offset"] + 1
    assert two["epoch"] == one["epoch"]


async def test_student_never_sees_other_classroom(embedded_server: ServerProcess) -> None:
    async with (
        connect(embedded_server.ws_url) as cy,
        connect(embedded_server.ws_url) as dee,
    ):
        await subscribed(cy, "nw-cy", MATH_101)
        await subscribed(dee, "nw-dee", SCI_201)
        await publish(embedded_server, "nw-bo", SCI_201, "Lab safety")
        got = (await dee.next_data())["channel"]
        assert got["announcement"]["title"] == "Lab safety"
        with pytest.raises(TimeoutError):
            await cy.recv(wait=0.5)
        # cy's subscription is alive: its own classroom still arrives.
        await publish(embedded_server, "nw-ada", MATH_101, "Algebra homework")
        assert (await cy.next_data())["channel"]["announcement"]["title"] == "Algebra homework"


@PROTOCOLS
@pytest.mark.parametrize(
    ("user", "channel", "code"),
    [
        ("rv-finn", "institution:northwood", "FORBIDDEN"),
        ("nw-cy", "institution:northwood:classroom:nw-sci-201", "FORBIDDEN"),
        ("nw-cy", "institution:northwood:department:nw-science", "FORBIDDEN"),
        ("nw-cy", "user:nw-dee", "FORBIDDEN"),
        ("nw-cy", "institution:northwood:role:teacher", "FORBIDDEN"),
        ("nw-cy", "system:status", "FORBIDDEN"),
        ("nw-cy", "institution:northwood:gym", "BAD_CHANNEL"),
        ("nw-cy", "", "BAD_CHANNEL"),
    ],
)
async def test_subscription_denied_with_code(
    embedded_server: ServerProcess, protocol: str, user: str, channel: str, code: str
) -> None:
    async with connect(embedded_server.ws_url, protocol) as client:
        await client.init(token(user))
        await client.subscribe(SUBSCRIBE, {"name": channel})
        message = await client.recv()
        # Execution errors arrive as a result with errors, then the operation ends.
        assert message["type"] in ("next", "data"), message
        assert message["payload"]["data"] is None
        assert error_codes(message) == [code]
        assert (await client.recv())["type"] == "complete"


def _bad_tokens() -> dict[str, str | None]:
    other = TokenService(algorithm="HS256", verify_key="x" * 48, signing_key="x" * 48)
    ours = TokenService(algorithm="HS256", verify_key=SECRET, signing_key=SECRET)
    claims = {"sub": "nw-cy", "role": Role.STUDENT, "institution": "northwood"}
    return {
        "missing": None,
        "garbage": "not-a-jwt",
        "wrong-signature": other.mint(**claims),  # type: ignore[arg-type]
        "expired": ours.mint(**claims, ttl_seconds=-60),  # type: ignore[arg-type]
    }


@PROTOCOLS
@pytest.mark.parametrize("kind", list(_bad_tokens()))
async def test_bad_token_closes_with_4403(
    embedded_server: ServerProcess, protocol: str, kind: str
) -> None:
    bad = _bad_tokens()[kind]
    async with connect(embedded_server.ws_url, protocol) as client:
        with pytest.raises(Closed) as closed:
            await client.init(bad)
            while True:  # legacy graphql-ws sends connection_error before closing
                message = await client.recv()
                assert message["type"] == "connection_error", message
    # An expired token on graphql-transport-ws: 4401, which graphql-ws does not retry
    # (tests/integration/test_token_expiry.py).
    assert closed.value.code == (4401 if kind == "expired" and protocol == TRANSPORT_WS else 4403)


@PROTOCOLS
async def test_capitalised_authorization_key_is_accepted(
    embedded_server: ServerProcess, protocol: str
) -> None:
    async with connect(embedded_server.ws_url, protocol) as client:
        ack = await client.init(token("nw-cy"), key="Authorization")
    assert ack["type"] == "connection_ack"


async def test_subscribe_before_init_is_refused(embedded_server: ServerProcess) -> None:
    async with connect(embedded_server.ws_url) as client:
        await client.subscribe(SUBSCRIBE, {"name": MATH_101})
        with pytest.raises(Closed) as closed:
            await client.recv()
    assert closed.value.code == 4401


@PROTOCOLS
async def test_connection_closes_when_token_expires(
    embedded_server: ServerProcess, protocol: str
) -> None:
    async with connect(embedded_server.ws_url, protocol) as client:
        ack = await client.init(token("nw-cy", ttl=1))
        assert ack["type"] == "connection_ack"
        await client.subscribe(SUBSCRIBE, {"name": MATH_101})
        with pytest.raises(Closed) as closed:
            while True:
                await client.recv(wait=10)
    assert closed.value.code == 4403
    assert closed.value.reason == "token expired"


async def test_compression_is_declined_by_default(embedded_server: ServerProcess) -> None:
    """Clients (browsers too) offer permessage-deflate; the server says no unless
    EDUMATRIX_WS_COMPRESSION is set, because fan-out would deflate per subscriber."""
    async with connect(embedded_server.ws_url) as client:
        assert client.ws.protocol.extensions == []
