"""Analytics over GraphQL in embedded mode: the in-process log feeds the same
aggregator as Kafka, and only the institution's admins and services read it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.server import ServerProcess

TRACK = 'mutation($t: String!) { trackActivity(input: {type: $t, data: {page: "/x"}}) }'
SERIES = """query($i: ID!, $f: DateTime!, $t: DateTime!) {
  analytics(institutionId: $i, metric: EVENTS, from: $f, to: $t, bucket: DAY,
            eventType: "activity.quiz_open") { at value }
  activeUsers(institutionId: $i, from: $f, to: $t)
  topEvents(institutionId: $i, from: $f, to: $t, limit: 50) { key count }
}"""


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors", [])]


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"f": (now - timedelta(days=1)).isoformat(), "t": (now + timedelta(days=1)).isoformat()}


def test_track_activity_reaches_aggregates(embedded_server: ServerProcess) -> None:
    for user in ("nw-cy", "nw-cy", "nw-dee"):
        result = embedded_server.graphql(TRACK, {"t": "quiz_open"}, as_user=user)
        assert result["data"] == {"trackActivity": True}
    variables: dict[str, object] = {"i": "northwood", **window()}
    data: dict[str, Any] = {}
    for _ in range(50):
        result = embedded_server.graphql(SERIES, variables, as_user="nw-admin")
        data = result["data"]  # type: ignore[assignment]
        if sum(p["value"] for p in data["analytics"]) >= 3:
            break
        time.sleep(0.1)
    assert sum(p["value"] for p in data["analytics"]) == 3
    assert data["activeUsers"] >= 2
    top = {c["key"]: c["count"] for c in data["topEvents"]}
    assert top["activity.quiz_open"] == 3
    assert top.get("auth.login", 0) >= 3  # each authenticated request is a login event


def test_analytics_access(embedded_server: ServerProcess) -> None:
    """Each of SERIES's three fields is refused on its own (they are nullable)."""
    variables: dict[str, object] = {"i": "northwood", **window()}
    teacher = embedded_server.graphql(SERIES, variables, as_user="nw-ada")
    assert codes(teacher) == ["FORBIDDEN"] * 3
    assert teacher["data"] == {"analytics": None, "activeUsers": None, "topEvents": None}
    other = embedded_server.graphql(SERIES, variables, as_user="rv-admin")
    assert codes(other) == ["NOT_FOUND"] * 3
    bad = embedded_server.graphql(TRACK, {"t": "Not Valid!"}, as_user="nw-cy")
    assert codes(bad) == ["BAD_INPUT"]


def test_system_status_for_admins(embedded_server: ServerProcess) -> None:
    query = "{ systemStatus { eventLog eventsEmitted eventsDropped consumers { topic lag } } }"
    status = embedded_server.graphql(query, as_user="nw-admin")["data"]["systemStatus"]  # type: ignore[index]
    assert status["eventLog"] == "memory" and status["eventsEmitted"] > 0
    assert [c["topic"] for c in status["consumers"]] == ["memory"]
    assert codes(embedded_server.graphql(query, as_user="nw-cy")) == ["FORBIDDEN"]


@pytest.mark.parametrize("fast", ["true", "false"])
def test_bad_variables_count_as_bad_input_not_internal_errors(
    make_server: Callable[..., ServerProcess], tmp_path: Path, fast: str
) -> None:
    """A client's bad variables and forbidden requests are client errors, which do
    not feed errors/min or its alert; the same on the HTTP fast path and on
    Strawberry's."""
    server = make_server(data_dir=str(tmp_path / fast), http_fast_path=fast)
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    publish = "mutation($i: PublishAnnouncementInput!) { publishAnnouncement(input: $i) { id } }"
    given = {"channel": "institution:northwood:classroom:nw-math-101", "title": "t", "body": "b"}
    bogus = server.graphql(publish, {"i": {**given, "priority": "BOGUS"}}, as_user="nw-ada")
    assert bogus["data"] is None and "BOGUS" in bogus["errors"][0]["message"]
    denied = server.graphql(publish, {"i": given}, as_user="nw-cy")  # a student
    assert codes(denied) == ["FORBIDDEN"]
    variables: dict[str, object] = {"i": "northwood", **window()}
    top: dict[str, int] = {}
    for _ in range(50):
        result = server.graphql(SERIES, variables, as_user="nw-admin")
        top = {c["key"]: c["count"] for c in result["data"]["topEvents"]}  # type: ignore[index]
        if top.get("client_error.forbidden") and top.get("client_error.bad_input"):
            break
        time.sleep(0.1)
    assert top.get("client_error.bad_input") == 1 and top.get("client_error.forbidden") == 1
    assert not [key for key in top if key.startswith("error.")], top
