"""Tokens with hostile time claims, over HTTP and both WebSocket protocols.

Each is signed with the server's real secret, so only the claim checks stand
between it and a session: HTTP must answer a GraphQL error with
``UNAUTHENTICATED`` (never a plain-text 500), and a WebSocket must be closed with
4403 before its ``connection_init`` is acknowledged (an expired one on
graphql-transport-ws: 4401, which graphql-ws does not retry). The server stays
healthy.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, Closed, connect
from tests.server import SECRET, ServerProcess, token

DAY = 24 * 3600
ME = "{ me { id } }"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "nw-cy",
        "role": "student",
        "inst": "northwood",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def _bad_tokens() -> dict[str, str]:
    """Built when the test runs, so "now" is the server's now too."""
    now = int(time.time())
    cases: dict[str, dict[str, Any]] = {
        # PyJWT int()s a string, so the token passed; our expiry saw no number.
        "exp-numeric-string": {"exp": str(now + 600)},
        "exp-float": {"exp": now + 600.5},
        "exp-1e20": {"exp": 10**20},  # was a plain-text 500 / a dropped socket
        "exp-beyond-max-ttl": {"exp": now + 31 * DAY},
        "exp-past": {"exp": now - 60},
        "iat-future": {"iat": now + 600},
        "nbf-future": {"nbf": now + 600},
        "iat-numeric-string": {"iat": str(now)},
    }
    return {
        name: jwt.encode(_claims(**overrides), SECRET, algorithm="HS256")
        for name, overrides in cases.items()
    }


CASES = list(_bad_tokens())


def _healthy(server: ServerProcess) -> None:
    assert server.process is not None and server.process.poll() is None, server.log()
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    good = server.graphql(ME, as_user="nw-cy")
    assert good == {"data": {"me": {"id": "nw-cy"}}}, good


@pytest.mark.parametrize("case", CASES)
def test_http_refuses_with_unauthenticated(embedded_server: ServerProcess, case: str) -> None:
    bad = _bad_tokens()[case]
    response = httpx.post(
        f"{embedded_server.url}/graphql",
        json={"query": ME},
        headers={"Authorization": f"Bearer {bad}"},
        timeout=10,
    )
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["data"] is None, body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"], body
    _healthy(embedded_server)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize("case", CASES)
async def test_websocket_closes_with_4403(
    embedded_server: ServerProcess, protocol: str, case: str
) -> None:
    bad = _bad_tokens()[case]
    async with connect(embedded_server.ws_url, protocol) as client:
        with pytest.raises(Closed) as closed:
            await client.init(bad)
            while True:  # legacy graphql-ws sends connection_error before closing
                message = await client.recv()
                assert message["type"] == "connection_error", message
    expired = case == "exp-past" and protocol == TRANSPORT_WS
    assert closed.value.code == (4401 if expired else 4403)
    _healthy(embedded_server)


async def test_good_token_still_acknowledged(embedded_server: ServerProcess) -> None:
    """The control: the same path with an ordinary token is acknowledged."""
    for protocol in (TRANSPORT_WS, LEGACY_WS):
        async with connect(embedded_server.ws_url, protocol) as client:
            assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
