"""Queries, mutations and operational endpoints over plain HTTP (embedded mode)."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
import pytest

from tests.server import ServerProcess


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors", [])]


def audit_rows(server: ServerProcess) -> list[tuple[str, str, str | None, str | None]]:
    with sqlite3.connect(server.workdir / ".edumatrix" / "edumatrix.db") as db:
        return db.execute(
            "SELECT action, outcome, actor_id, target FROM audit_log ORDER BY id"
        ).fetchall()


def test_me_and_own_institution_only(embedded_server: ServerProcess) -> None:
    result = embedded_server.graphql(
        "{ me { id role displayName institutionId classroomIds } "
        "institutions { id departments { id } classrooms { id channel } } }",
        as_user="nw-ada",
    )
    assert result["data"] == {
        "me": {
            "id": "nw-ada",
            "role": "TEACHER",
            "displayName": "Ada Lovelace",
            "institutionId": "northwood",
            "classroomIds": ["nw-math-101", "nw-math-102"],
        },
        "institutions": [
            {
                "id": "northwood",
                "departments": [{"id": "nw-math"}, {"id": "nw-science"}],
                "classrooms": [
                    {"id": "nw-math-101", "channel": "institution:northwood:classroom:nw-math-101"},
                    {"id": "nw-math-102", "channel": "institution:northwood:classroom:nw-math-102"},
                    {"id": "nw-sci-201", "channel": "institution:northwood:classroom:nw-sci-201"},
                ],
            }
        ],
    }


def test_other_institution_is_not_found(embedded_server: ServerProcess) -> None:
    own = embedded_server.graphql('{ institution(id: "riverside") { name } }', as_user="rv-finn")
    assert own["data"] == {"institution": {"name": "Riverside University"}}
    other = embedded_server.graphql('{ institution(id: "riverside") { name } }', as_user="nw-cy")
    assert codes(other) == ["NOT_FOUND"]


@pytest.mark.parametrize("header", [None, "Bearer nonsense", "Basic abc", "Bearer"])
def test_unauthenticated_http(embedded_server: ServerProcess, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.post(
        f"{embedded_server.url}/graphql", json={"query": "{ me { id } }"}, headers=headers
    )
    assert codes(response.json()) == ["UNAUTHENTICATED"]


def test_publish_then_read_back_in_order(embedded_server: ServerProcess) -> None:
    channel = "institution:northwood:department:nw-math"
    mutation = (
        "mutation($c: String!, $t: String!) { publishAnnouncement("
        'input: {channel: $c, title: $t, body: " spaced body "}) { id title body priority } }'
    )
    ids = []
    for title in ("first", "second", "third"):
        result = embedded_server.graphql(mutation, {"c": channel, "t": title}, as_user="nw-ada")
        announcement = result["data"]["publishAnnouncement"]  # type: ignore[index]
        assert announcement["body"] == "spaced body" and announcement["priority"] == "NORMAL"
        ids.append(announcement["id"])
    read = embedded_server.graphql(
        "query($c: String!) { announcements(channel: $c, last: 2) { id title } }",
        {"c": channel},
        as_user="nw-cy",
    )
    assert read["data"] == {
        "announcements": [{"id": ids[1], "title": "second"}, {"id": ids[2], "title": "third"}]
    }
    position = embedded_server.graphql(
        "query($c: String!) { channelPosition(name: $c) { offset epoch } }",
        {"c": channel},
        as_user="nw-cy",
    )
    assert position["data"]["channelPosition"]["offset"] >= 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("user", "channel", "title", "code"),
    [
        ("nw-cy", "institution:northwood:classroom:nw-math-101", "t", "FORBIDDEN"),
        ("nw-ada", "institution:northwood:classroom:nw-sci-201", "t", "FORBIDDEN"),
        ("nw-ada", "institution:northwood", "t", "FORBIDDEN"),
        ("nw-admin", "institution:riverside", "t", "FORBIDDEN"),
        ("nw-admin", "user:rv-finn", "t", "FORBIDDEN"),
        ("nw-admin", "institution:northwood:nope", "t", "BAD_CHANNEL"),
        ("nw-admin", "institution:northwood", "   ", "BAD_INPUT"),
        ("nw-admin", "institution:northwood", "x" * 201, "BAD_INPUT"),
    ],
)
def test_publish_refusals(
    embedded_server: ServerProcess, user: str, channel: str, title: str, code: str
) -> None:
    result = embedded_server.graphql(
        "mutation($c: String!, $t: String!) { publishAnnouncement("
        'input: {channel: $c, title: $t, body: "b"}) { id } }',
        {"c": channel, "t": title},
        as_user=user,
    )
    assert codes(result) == [code]


def test_admin_may_notify_own_user(embedded_server: ServerProcess) -> None:
    result = embedded_server.graphql(
        'mutation { publishAnnouncement(input: {channel: "user:nw-cy", title: "Hi", body: "b"})'
        " { channel } }",
        as_user="nw-admin",
    )
    assert result["data"] == {"publishAnnouncement": {"channel": "user:nw-cy"}}


def test_audit_log_records_mutations_denials_and_failed_auth(
    embedded_server: ServerProcess,
) -> None:
    embedded_server.graphql(
        'mutation { publishAnnouncement(input: {channel: "institution:northwood", '
        'title: "Audit me", body: "b"}) { id } }',
        as_user="nw-admin",
    )
    embedded_server.graphql(
        'mutation { publishAnnouncement(input: {channel: "institution:northwood", '
        'title: "No", body: "b"}) { id } }',
        as_user="nw-dee",
    )
    httpx.post(
        f"{embedded_server.url}/graphql",
        json={"query": "{ me { id } }"},
        headers={"Authorization": "Bearer forged"},
    )
    rows = audit_rows(embedded_server)
    assert ("publishAnnouncement", "ok", "nw-admin", "institution:northwood") in rows
    assert ("publish", "denied", "nw-dee", "institution:northwood") in rows
    assert ("authenticate", "failed", None, "http") in rows


def test_masks_unexpected_errors_but_not_validation(embedded_server: ServerProcess) -> None:
    result = embedded_server.graphql("{ nope }", as_user="nw-cy")
    assert "Cannot query field 'nope'" in result["errors"][0]["message"]  # type: ignore[index]


def test_token_limit_refuses_huge_documents(embedded_server: ServerProcess) -> None:
    small = embedded_server.graphql("{ me { " + "id " * 100 + "} }", as_user="nw-cy")
    assert small["data"] == {"me": {"id": "nw-cy"}}
    huge = embedded_server.graphql("{ me { " + "id " * 2100 + "} }", as_user="nw-cy")
    assert "token" in huge["errors"][0]["message"].lower()  # type: ignore[index]


def test_operational_endpoints(embedded_server: ServerProcess) -> None:
    base = embedded_server.url
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz").json()
    assert ready == {
        "status": "ready",
        "mode": "embedded",
        "database": "ok",
        "bus": "ok",
        "events": "ok",
    }
    metrics = httpx.get(f"{base}/metrics").text
    assert "edumatrix_messages_published_total" in metrics
    assert "edumatrix_websocket_connections" in metrics
    assert httpx.get(f"{base}/graphiql").headers["location"] == "/graphql"
    ide = httpx.get(f"{base}/graphql", headers={"Accept": "text/html"})
    assert ide.status_code == 200 and "graphiql" in ide.text.lower()
