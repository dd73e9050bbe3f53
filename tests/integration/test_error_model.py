"""Every error a client can cause has a code, and the log says whose fault it was.

A typo, a refused channel or a bad token is the caller's mistake: logged at info,
one line, no traceback; an unexpected exception is the server's: logged at error
with its traceback, and shown to the client masked, with a code. Against a real
server process, on HTTP and on the graphql-transport-ws protocol, in both passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.gqlws import TRANSPORT_WS, connect
from tests.server import ServerProcess, token

Make = Callable[..., ServerProcess]

MISTAKES = {
    "GRAPHQL_PARSE_FAILED": "{ me { id ",
    "GRAPHQL_VALIDATION_FAILED": "{ me { nope } }",
    "FORBIDDEN": '{ announcements(channel: "institution:riverside", last: 1) { title } }',
    "BAD_INPUT": '{ announcements(channel: "institution:northwood", last: 0) { title } }',
    "QUERY_TOO_LARGE": "{ me { " + "id " * 20_000 + "} }",  # over EDUMATRIX_MAX_QUERY_TOKENS
}


@pytest.fixture
def server(make_server: Make) -> ServerProcess:
    """A server of its own, so its log holds only this test's lines (JSON lines)."""
    found = make_server(log_format="json")
    found.cli("migrate")
    found.cli("seed-demo")
    return found.start()


def codes(body: dict[str, object]) -> list[str]:
    errors = body["errors"]
    assert isinstance(errors, list)
    return [e["extensions"]["code"] for e in errors]


def test_client_mistakes_have_codes_and_log_at_info_without_traceback(
    server: ServerProcess,
) -> None:
    headers = {"Authorization": f"Bearer {token('nw-cy')}"}
    for code, query in MISTAKES.items():
        body = httpx.post(f"{server.url}/graphql", json={"query": query}, headers=headers).json()
        assert code in codes(body), (code, body)
    bad_token = {"Authorization": "Bearer not-a-token"}
    body = httpx.post(f"{server.url}/graphql", json={"query": "{ me { id } }"}, headers=bad_token)
    assert codes(body.json()) == ["UNAUTHENTICATED"]
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("event") == "graphql.error"]
    assert sorted(line["code"] for line in errors) == sorted([*MISTAKES, "UNAUTHENTICATED"])
    assert {line["level"] for line in errors} == {"info"}
    assert "Traceback" not in server.log()
    assert not [line for line in lines if line.get("level") == "error"]


async def test_a_subscription_with_a_typo_gets_a_coded_error(server: ServerProcess) -> None:
    async with connect(server.ws_url, TRANSPORT_WS) as client:
        await client.init(token("nw-cy"))
        op_id = await client.subscribe("subscription { channel(name: 5) { offset } }")
        message = await client.recv()
    assert message["type"] == "error" and message["id"] == op_id
    assert [e["extensions"]["code"] for e in message["payload"]] == ["GRAPHQL_VALIDATION_FAILED"]
