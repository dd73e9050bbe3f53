"""Alerts end to end in embedded mode: delivery, roll-call counts, ACL and bad input.

Northwood's people (db/seed.py): nw-admin, nw-ada and nw-bo (teachers), nw-cy and
nw-dee (students); nw-bell is a service account, not a person to account for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.gqlws import connect
from tests.integration.test_embedded_ws import MATH_101
from tests.presence_client import codes, present
from tests.server import ServerProcess, token

RAISE = """
mutation($i: ID!, $s: Severity!, $t: String!, $targets: [String!]) {
  raiseAlert(input: {institutionId: $i, severity: $s, title: $t, body: "go", targets: $targets}) {
    id severity title targets raisedBy state
  }
}"""
ACK = "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { alertId userId acknowledgedAt } }"
RESOLVE = "mutation($id: ID!) { resolveAlert(alertId: $id) { id state resolvedBy } }"
ALERT = """
query($id: ID!) {
  alert(id: $id) {
    id state
    rollCall {
      targetedCount acknowledgedCount pendingCount pendingOnlineCount
      acknowledged { userId acknowledgedAt online }
      pending { userId displayName online }
    }
  }
}"""
ALERTS = "subscription($i: ID!) { alerts(institutionId: $i) { id title state severity } }"
CHANNEL_ALERT = """
subscription($name: String!) { channel(name: $name) { kind alert { id title targets } } }"""


async def gql(
    server: ServerProcess, query: str, user: str | None, /, **variables: Any
) -> dict[str, Any]:
    return await asyncio.to_thread(server.graphql, query, variables, as_user=user)


async def raise_alert(
    server: ServerProcess, user: str, targets: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    variables = {"i": "northwood", "s": "EMERGENCY", "t": "Lockdown", "targets": targets}
    return await gql(server, RAISE, user, **{**variables, **extra})


async def test_institution_alert_roll_call_counts_are_exact(embedded_server: ServerProcess) -> None:
    server = embedded_server
    async with (
        connect(server.ws_url) as follower,
        present(server, "nw-dee", "institution:northwood"),
    ):
        assert (await follower.init(token("nw-cy")))["type"] == "connection_ack"
        await follower.subscribe(ALERTS, {"i": "northwood"})
        await asyncio.sleep(0.2)
        raised = (await raise_alert(server, "nw-admin"))["data"]["raiseAlert"]
        assert raised["state"] == "OPEN" and raised["targets"] == []
        live = (await follower.next_data())["alerts"]
        assert (live["id"], live["severity"]) == (raised["id"], "EMERGENCY")
        alert_id = raised["id"]
        for user in ("nw-cy", "nw-bo"):
            acked = await gql(server, ACK, user, id=alert_id)
            assert acked["data"]["acknowledgeAlert"]["userId"] == user
        twice = await gql(server, ACK, "nw-cy", id=alert_id)
        assert codes(twice) == ["BAD_INPUT"] and "already acknowledged" in str(twice)
        roll = (await gql(server, ALERT, "nw-admin", id=alert_id))["data"]["alert"]["rollCall"]
        assert roll["targetedCount"] == 5 and roll["acknowledgedCount"] == 2
        assert [p["userId"] for p in roll["acknowledged"]] == ["nw-cy", "nw-bo"]
        assert roll["pendingCount"] == 3 and roll["pendingOnlineCount"] == 1
        pending = {p["userId"]: p["online"] for p in roll["pending"]}
        assert pending == {"nw-ada": False, "nw-admin": False, "nw-dee": True}
        assert codes(await gql(server, RESOLVE, "nw-ada", id=alert_id)) == ["FORBIDDEN"]
        resolved = (await gql(server, RESOLVE, "nw-admin", id=alert_id))["data"]["resolveAlert"]
        assert resolved == {"id": alert_id, "state": "RESOLVED", "resolvedBy": "nw-admin"}
        assert (await follower.next_data())["alerts"]["state"] == "RESOLVED"
        late = await gql(server, ACK, "nw-dee", id=alert_id)
        assert codes(late) == ["BAD_INPUT"] and "resolved" in str(late)
        assert codes(await gql(server, RESOLVE, "nw-admin", id=alert_id)) == ["BAD_INPUT"]


async def test_teacher_alert_reaches_her_classroom_only(embedded_server: ServerProcess) -> None:
    server = embedded_server
    async with connect(server.ws_url) as student:
        assert (await student.init(token("nw-cy")))["type"] == "connection_ack"
        await student.subscribe(CHANNEL_ALERT, {"name": MATH_101})
        await asyncio.sleep(0.2)
        raised = (await raise_alert(server, "nw-ada", [MATH_101], s="WARNING"))["data"]
        alert_id = raised["raiseAlert"]["id"]
        event = (await student.next_data())["channel"]
        assert event["kind"] == "alert"
        assert event["alert"] == {"id": alert_id, "title": "Lockdown", "targets": [MATH_101]}
    roll = (await gql(server, ALERT, "nw-ada", id=alert_id))["data"]["alert"]["rollCall"]
    assert roll["targetedCount"] == 2 and roll["pendingCount"] == 2
    assert {p["userId"] for p in roll["pending"]} == {"nw-ada", "nw-cy"}
    as_target = (await gql(server, ALERT, "nw-cy", id=alert_id))["data"]["alert"]
    assert as_target == {"id": alert_id, "state": "OPEN", "rollCall": None}
    assert codes(await gql(server, ALERT, "nw-dee", id=alert_id)) == ["NOT_FOUND"]
    assert codes(await gql(server, ALERT, "rv-admin", id=alert_id)) == ["NOT_FOUND"]
    assert codes(await gql(server, ACK, "nw-dee", id=alert_id)) == ["FORBIDDEN"]
    assert codes(await gql(server, ACK, "rv-finn", id=alert_id)) == ["NOT_FOUND"]
    resolved = await gql(server, RESOLVE, "nw-ada", id=alert_id)  # the raiser may
    assert resolved["data"]["resolveAlert"]["state"] == "RESOLVED"


async def test_who_may_raise_and_bad_input(embedded_server: ServerProcess) -> None:
    server = embedded_server
    forbidden = [
        ("nw-cy", None),  # students never
        ("nw-cy", [MATH_101]),
        ("nw-ada", None),  # a teacher's alert needs targets ...
        ("nw-ada", ["institution:northwood"]),  # ... within her classes/departments
        ("nw-ada", ["institution:northwood:classroom:nw-sci-201"]),  # Bo's classroom
        ("nw-ada", ["institution:riverside:classroom:rv-cs-110"]),
    ]
    for user, targets in forbidden:
        assert codes(await raise_alert(server, user, targets)) == ["FORBIDDEN"], (user, targets)
    other = await raise_alert(server, "nw-admin", None, i="riverside")
    assert codes(other) == ["FORBIDDEN"]
    dept = await raise_alert(server, "nw-ada", ["institution:northwood:department:nw-math"])
    assert "errors" not in dept
    assert codes(await raise_alert(server, "nw-admin", None, t="  ")) == ["BAD_INPUT"]
    assert codes(await raise_alert(server, "nw-admin", ["nope"])) == ["BAD_CHANNEL"]
    severity = await raise_alert(server, "nw-admin", None, s="APOCALYPSE")
    assert "Severity" in severity["errors"][0]["message"]
    assert codes(await gql(server, ACK, "nw-cy", id="999999")) == ["NOT_FOUND"]
    assert codes(await gql(server, ACK, "nw-cy", id="abc")) == ["BAD_INPUT"]
    assert codes(await gql(server, ALERT, "nw-admin", id="999999")) == ["NOT_FOUND"]
    assert codes(await gql(server, RESOLVE, None, id="1")) == ["UNAUTHENTICATED"]
    async with connect(server.ws_url) as outsider:
        assert (await outsider.init(token("nw-cy")))["type"] == "connection_ack"
        await outsider.subscribe(ALERTS, {"i": "riverside"})
        refused = await outsider.recv()
        # Strawberry reports a failing subscription resolver as a payload with errors.
        assert refused["type"] in ("next", "error") and "FORBIDDEN" in str(refused["payload"])
