"""Following alerts against a real server: acknowledgements announced to whoever
manages the alert (and nobody else), replayed with ``since``; the live roll-call
(``Subscription.alertRollCall``); the page of alerts (``Query.alertPage``).

Northwood's people (db/seed.py): nw-admin, nw-ada (teaches nw-math-101), nw-bo,
nw-cy (in nw-math-101), nw-dee; nw-bell is a service. Riverside: rv-admin, ...
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

from tests.gqlws import GraphQLWS, connect
from tests.integration.test_alerts import gql
from tests.integration.test_embedded_ws import MATH_101, error_codes
from tests.integration.test_http_streams import codes as payload_codes
from tests.integration.test_http_streams import collect, sse
from tests.presence_client import codes
from tests.server import ServerProcess, token

Make = Callable[..., ServerProcess]
ADMINS = "institution:northwood:role:admin"
ALERTS = "institution:northwood:alerts"
RAISE = """
mutation($t: String!, $targets: [String!]) {
  raiseAlert(input: {institutionId: "northwood", severity: WARNING, title: $t, body: "go",
                     targets: $targets}) { id }
}"""
ACK = "mutation($id: ID!) { acknowledgeAlert(alertId: $id) { acknowledgedAt } }"
RESOLVE = "mutation($id: ID!) { resolveAlert(alertId: $id) { id state } }"
NOTIFY = """mutation($u: ID!) { notify(input: {userId: $u, title: "marker", body: "m"}) {
  notification { id } } }"""
EVENTS = """
subscription($c: String!, $since: PositionInput) {
  channel(channel: $c, since: $since) { offset epoch type kind recovered data }
}"""
POSITION = "query($c: String!) { channelPosition(channel: $c) { offset epoch } }"
ROLL_CALL = """
subscription($id: ID!) {
  alertRollCall(id: $id) {
    id state
    rollCall { targetedCount acknowledgedCount pendingCount acknowledged { userId } }
  }
}"""
PAGE = """
query($state: AlertStateFilter, $first: Int, $after: String) {
  alertPage(state: $state, first: $first, after: $after) {
    rows { id state rollCall { targetedCount acknowledgedCount } }
    nextCursor
  }
}"""


async def raise_alert(server: ServerProcess, user: str, title: str, targets: Any = None) -> str:
    answer = await gql(server, RAISE, user, t=title, targets=targets)
    assert "errors" not in answer, answer
    alert_id: str = answer["data"]["raiseAlert"]["id"]
    return alert_id


async def subscriber(client: GraphQLWS, user: str, query: str, **variables: Any) -> None:
    assert (await client.init(token(user)))["type"] == "connection_ack"
    await client.subscribe(query, variables)


async def next_event(client: GraphQLWS, kind: str) -> dict[str, Any]:
    """The next channel event of ``kind``, skipping others (e.g. analytics alerts that
    other tests' activity raises on the admins' channel)."""
    for _ in range(50):
        event: dict[str, Any] = (await client.next_data())["channel"]
        if event["kind"] == kind:
            return event
    raise AssertionError(f"no {kind} event")


def ack_data(event: dict[str, Any]) -> dict[str, Any]:
    data = dict(event["data"])
    assert data.pop("acknowledgedAt").endswith("+00:00"), event
    return data


async def test_an_acknowledgement_reaches_whoever_manages_the_alert_only(
    make_server: Make,
) -> None:
    # Its own server: the markers below are notifications, which would show up in
    # the inboxes other modules check on the shared embedded server.
    server = await start(make_server)
    async with (
        connect(server.ws_url) as admin,
        connect(server.ws_url) as raiser,
        connect(server.ws_url) as student,
        connect(server.ws_url) as everyone,
    ):
        await subscriber(admin, "nw-admin", EVENTS, c=ADMINS)
        await subscriber(raiser, "nw-ada", EVENTS, c="user:nw-ada")
        await subscriber(student, "nw-cy", EVENTS, c="user:nw-cy")
        await subscriber(everyone, "nw-dee", EVENTS, c=ALERTS)
        await asyncio.sleep(0.2)
        alert_id = await raise_alert(server, "nw-ada", "Ack fan-out", [MATH_101])
        assert (await next_event(everyone, "alert"))["data"]["alert"]["id"] == alert_id
        await gql(server, ACK, "nw-cy", id=alert_id)

        for client in (admin, raiser):
            event = await next_event(client, "alert.acknowledged")
            assert event["type"] == "ALERT_ACKNOWLEDGED" and event["recovered"] is True
            assert ack_data(event) == {
                "alertId": alert_id,
                "userId": "nw-cy",
                "acknowledgedCount": 1,
                "pendingCount": 1,
            }
        await gql(server, ACK, "nw-ada", id=alert_id)  # the raiser is targeted too
        for client in (admin, raiser):
            counts = ack_data(await next_event(client, "alert.acknowledged"))
            assert (counts["userId"], counts["acknowledgedCount"], counts["pendingCount"]) == (
                "nw-ada",
                2,
                0,
            )

        # Neither the student who acknowledged nor the institution's alerts channel
        # got one: the next message each receives is a marker sent after the acks.
        assert "errors" not in await gql(server, NOTIFY, "nw-admin", u="nw-cy")
        assert (await student.next_data())["channel"]["kind"] == "notification"
        assert "errors" not in await gql(server, RESOLVE, "nw-ada", id=alert_id)
        assert (await everyone.next_data())["channel"]["kind"] == "alert.resolved"

    # An alert raised by an admin: the admins' channel only, not the admin's own.
    async with connect(server.ws_url) as own:
        await subscriber(own, "nw-admin", EVENTS, c="user:nw-admin")
        await asyncio.sleep(0.2)
        alert_id = await raise_alert(server, "nw-admin", "Admin's alert", [MATH_101])
        await gql(server, ACK, "nw-cy", id=alert_id)
        assert "errors" not in await gql(server, NOTIFY, "nw-admin", u="nw-admin")
        assert (await own.next_data())["channel"]["kind"] == "notification"


async def test_since_replays_a_missed_acknowledgement(embedded_server: ServerProcess) -> None:
    server = embedded_server
    alert_id = await raise_alert(server, "nw-ada", "Missed ack", [MATH_101])
    position = (await gql(server, POSITION, "nw-ada", c="user:nw-ada"))["data"]["channelPosition"]
    await gql(server, ACK, "nw-cy", id=alert_id)  # nobody is subscribed now
    async with connect(server.ws_url) as raiser:
        await subscriber(raiser, "nw-ada", EVENTS, c="user:nw-ada", since=position)
        event = await next_event(raiser, "alert.acknowledged")
        assert event["recovered"] is True and event["offset"] > position["offset"]
        assert ack_data(event) == {
            "alertId": alert_id,
            "userId": "nw-cy",
            "acknowledgedCount": 1,
            "pendingCount": 1,
        }


def roll(data: dict[str, Any]) -> tuple[str, int, int, list[str]]:
    alert = data["alertRollCall"]
    call = alert["rollCall"]
    people = [p["userId"] for p in call["acknowledged"]]
    return alert["state"], call["acknowledgedCount"], call["pendingCount"], people


async def test_the_roll_call_follows_acknowledgements_live(embedded_server: ServerProcess) -> None:
    server = embedded_server
    alert_id = await raise_alert(server, "nw-ada", "Live roll-call", [MATH_101])
    async with connect(server.ws_url) as raiser, connect(server.ws_url) as admin:
        await subscriber(raiser, "nw-ada", ROLL_CALL, id=alert_id)
        await subscriber(admin, "nw-admin", ROLL_CALL, id=alert_id)
        for client in (raiser, admin):
            assert roll(await client.next_data()) == ("OPEN", 0, 2, [])
        await gql(server, ACK, "nw-cy", id=alert_id)  # a student, over HTTP
        for client in (raiser, admin):
            assert roll(await client.next_data()) == ("OPEN", 1, 1, ["nw-cy"])
        await gql(server, RESOLVE, "nw-ada", id=alert_id)
        for client in (raiser, admin):
            assert roll(await client.next_data()) == ("RESOLVED", 1, 1, ["nw-cy"])
            assert (await client.recv())["type"] == "complete"


async def test_the_roll_call_refuses_who_does_not_manage_the_alert(
    embedded_server: ServerProcess,
) -> None:
    server = embedded_server
    alert_id = await raise_alert(server, "nw-ada", "Not yours", [MATH_101])
    for user, code in [
        ("nw-cy", "FORBIDDEN"),  # targeted, but a student
        ("nw-bo", "NOT_FOUND"),  # another teacher, not targeted: as Query.alert says
        ("rv-admin", "NOT_FOUND"),  # another institution's admin
    ]:
        async with connect(server.ws_url) as client:
            await subscriber(client, user, ROLL_CALL, id=alert_id)
            message = await client.recv()
            assert message["type"] in ("next", "error"), message
            assert error_codes(message) == [code], (user, message)
    alert = await gql(server, "query($id: ID!) { alert(id: $id) { id } }", "nw-bo", id=alert_id)
    assert codes(alert) == ["NOT_FOUND"]


async def start(make_server: Make) -> ServerProcess:
    server = make_server()
    await asyncio.to_thread(server.cli, "migrate")
    await asyncio.to_thread(server.cli, "seed-demo")
    return await asyncio.to_thread(server.start)


async def walk(server: ServerProcess, user: str, first: int, **variables: Any) -> list[str]:
    """Every alert id of every page, following ``nextCursor`` to the end."""
    ids: list[str] = []
    after = None
    while True:
        answer = await gql(server, PAGE, user, first=first, after=after, **variables)
        assert "errors" not in answer, answer
        page = answer["data"]["alertPage"]
        assert len(page["rows"]) <= first
        ids += [row["id"] for row in page["rows"]]
        after = page["nextCursor"]
        if after is None:
            return ids


async def test_alert_pages_filter_by_state_and_show_what_alert_shows(make_server: Make) -> None:
    server = await start(make_server)
    # Seven alerts: three of Ada's on her classroom (nw-cy targeted), four of the
    # admin's on Bo's science classroom (nw-dee targeted), the first two resolved.
    science = "institution:northwood:classroom:nw-sci-201"
    ada = [await raise_alert(server, "nw-ada", f"Ada {i}", [MATH_101]) for i in range(3)]
    admin = [await raise_alert(server, "nw-admin", f"Admin {i}", [science]) for i in range(4)]
    for alert_id in (ada[0], admin[0]):
        assert "errors" not in await gql(server, RESOLVE, "nw-admin", id=alert_id)
    everything = sorted(ada + admin, key=int, reverse=True)
    open_ = [a for a in everything if a not in (ada[0], admin[0])]

    # Admins: every alert of the institution, newest first, each once, a page at a time.
    assert await walk(server, "nw-admin", 2) == open_  # OPEN by default
    assert await walk(server, "nw-admin", 3, state="ALL") == everything
    assert await walk(server, "nw-admin", 1, state="RESOLVED") == [admin[0], ada[0]]
    assert await walk(server, "nw-bell", 200, state="ALL") == everything  # a service
    # Others: what targets them, or what they raised; nothing of another institution.
    assert await walk(server, "nw-cy", 1, state="ALL") == ada[::-1]
    assert await walk(server, "nw-dee", 2, state="ALL") == admin[::-1]
    assert await walk(server, "nw-ada", 2) == ada[:0:-1]
    assert await walk(server, "nw-bo", 5, state="ALL") == admin[::-1]  # in nw-sci-201
    assert await walk(server, "nw-bo", 5, state="RESOLVED") == [admin[0]]
    assert await walk(server, "rv-admin", 5, state="ALL") == []

    # Roll-calls where Query.alert gives them: to whoever manages the alert.
    first = (await gql(server, PAGE, "nw-ada", first=1))["data"]["alertPage"]["rows"][0]
    assert first == {
        "id": ada[2],
        "state": "OPEN",
        "rollCall": {"targetedCount": 2, "acknowledgedCount": 0},
    }
    seen = (await gql(server, PAGE, "nw-cy", first=1))["data"]["alertPage"]["rows"][0]
    assert seen == {"id": ada[2], "state": "OPEN", "rollCall": None}
    by_admin = (await gql(server, PAGE, "nw-admin", first=10))["data"]["alertPage"]["rows"]
    assert all(row["rollCall"] is not None for row in by_admin)

    # Bad input: a page size out of range, a cursor of another list.
    for variables in ({"first": 0}, {"first": 201}, {"first": 5, "after": "bm90aWZpY2F0aW9uOjE"}):
        answer = await gql(server, PAGE, "nw-admin", **variables)
        assert answer["data"] == {"alertPage": None} and codes(answer) == ["BAD_INPUT"]


async def test_concurrent_acknowledgements_count_exactly_across_processes(
    make_server: Make, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Postgres and Redis, two processes: four people acknowledge at once, on either
    process; the admins' channel gets one event each with the counts 1 to 4 (the
    alert's row lock orders them), and a roll-call followed on the other process
    ends at four."""
    settings = {"database_url": pg_url, "redis_url": redis_url, "redis_prefix": redis_prefix}
    first = make_server(**settings)
    await asyncio.to_thread(first.cli, "migrate")
    await asyncio.to_thread(first.cli, "seed-demo")
    a = await asyncio.to_thread(first.start)
    b = await asyncio.to_thread(make_server(**settings).start)
    alert_id = await raise_alert(a, "nw-admin", "Everyone")  # the institution: 5 people
    async with connect(b.ws_url) as admins, connect(b.ws_url) as follower:
        await subscriber(admins, "nw-bell", EVENTS, c=ADMINS)  # a service reads it too
        await subscriber(follower, "nw-admin", ROLL_CALL, id=alert_id)
        assert roll(await follower.next_data()) == ("OPEN", 0, 5, [])
        people = ["nw-ada", "nw-bo", "nw-cy", "nw-dee"]
        await asyncio.gather(
            *(
                gql(server, ACK, user, id=alert_id)
                for server, user in zip([a, b, a, b], people, strict=True)
            )
        )
        events = [ack_data(await next_event(admins, "alert.acknowledged")) for _ in people]
        assert sorted(e["userId"] for e in events) == people
        assert sorted((e["acknowledgedCount"], e["pendingCount"]) for e in events) == [
            (1, 4),
            (2, 3),
            (3, 2),
            (4, 1),
        ]
        state = roll(await follower.next_data())
        while state[1] < 4:  # acknowledgements arriving together may share one update
            state = roll(await follower.next_data())
        assert state[:3] == ("OPEN", 4, 1) and sorted(state[3]) == people
        await gql(a, RESOLVE, "nw-admin", id=alert_id)
        assert roll(await follower.next_data())[0] == "RESOLVED"
        assert (await follower.recv())["type"] == "complete"


async def test_a_shutdown_ends_the_roll_call_with_a_code(make_server: Make) -> None:
    """Never silently: over SSE, the roll-call at once, then SIGTERM ends it with
    SHUTTING_DOWN (raised in the task watching the channels) before complete."""
    server = await start(make_server)
    alert_id = await raise_alert(server, "nw-ada", "Until shutdown", [MATH_101])
    body = {"query": ROLL_CALL, "variables": {"id": alert_id}}
    async with sse(server, "nw-ada", body) as response:
        assert response.status_code == 200
        await asyncio.sleep(0.5)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGTERM)
        got = await collect(response)
    assert [kind for kind, _ in got] == ["next", "next", "complete"], got
    assert roll(got[0][1]["data"]) == ("OPEN", 0, 2, [])
    assert payload_codes(got[1][1]) == ["SHUTTING_DOWN"]
