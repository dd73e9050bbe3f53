"""The schema as a frontend team uses it (issue 19), against a real server: partial
results, names behind ids, cursor pages past the old 200 limit, the unread count,
mutation payloads that update a client cache, the `channel` argument on every path
(both WebSocket protocols and SSE, multiplexed or not).

Northwood's people (db/seed.py): nw-admin (Nora Admin), nw-ada (Ada Lovelace,
teaches nw-math-101), nw-bo, nw-cy (Cy Student, in nw-math-101), nw-dee; nw-bell is
a service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.gqlws import LEGACY_WS, TRANSPORT_WS, connect
from tests.integration.test_alerts import gql
from tests.integration.test_embedded_ws import MATH_101, PROTOCOLS, error_codes, publish
from tests.integration.test_http_streams import events, sse
from tests.integration.test_multiplex import groups
from tests.presence_client import codes, present
from tests.server import ServerProcess, stock_only, token

Make = Callable[..., ServerProcess]

PAGE = """
query($c: String!, $first: Int!, $after: String) {
  announcementPage(channel: $c, first: $first, after: $after) {
    rows { id title authorId author { displayName } }
    nextCursor
  }
}"""
INBOX = """
query($first: Int!, $after: String, $unread: Boolean! = false) {
  notificationPage(first: $first, after: $after, unreadOnly: $unread) {
    rows { id title readAt senderId }
    nextCursor unreadCount
  }
}"""
NOTIFY = """
mutation($user: ID!, $title: String!) {
  notify(input: {userId: $user, title: $title, body: "b"}) { notification { id } }
}"""
MARK = """
mutation($ids: [ID!]!) {
  markNotificationsRead(ids: $ids) { marked unreadCount notifications { id readAt } }
}"""
RAISE = """
mutation($targets: [String!]) {
  raiseAlert(input: {institutionId: "northwood", severity: WARNING, title: "Fire drill",
                     body: "walk out", targets: $targets}) {
    id raisedBy raisedById raisedByUser { displayName role }
  }
}"""
ACK = """
mutation($id: ID!) {
  acknowledgeAlert(alertId: $id) {
    alertId acknowledgedAt user { displayName }
    alert { id state acknowledgedByMeAt rollCall { acknowledgedCount pendingCount } }
  }
}"""
LIVE = """
subscription($c: String!) {
  channel(channel: $c) { offset epoch channel type kind announcement { title } }
}"""
LIVE_WITH_AUTHOR = """
subscription($c: String!) {
  channel(channel: $c) { type announcement { title author { displayName role } } }
}"""


async def start(make_server: Make) -> ServerProcess:
    server = make_server()
    await asyncio.to_thread(server.cli, "migrate")
    await asyncio.to_thread(server.cli, "seed-demo")
    return await asyncio.to_thread(server.start)


def data(result: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in result, result
    got: dict[str, Any] = result["data"]
    return got


# -- nullability: one missing object does not wipe the response -------------------------


async def test_a_missing_object_nulls_only_its_own_field(embedded_server: ServerProcess) -> None:
    query = """{
      me { id }
      institution(id: "riverside") { id }
      alert(id: "999999") { id }
      user(id: "rv-finn") { id }
      mine: institution(id: "northwood") { name }
    }"""
    result = await gql(embedded_server, query, "nw-cy")
    assert result["data"] == {
        "me": {"id": "nw-cy"},
        "institution": None,
        "alert": None,
        "user": None,
        "mine": {"name": "Northwood High School"},
    }
    assert sorted((e["path"][0], e["extensions"]["code"]) for e in result["errors"]) == [
        ("alert", "NOT_FOUND"),
        ("institution", "NOT_FOUND"),
        ("user", "NOT_FOUND"),
    ]


async def test_a_failed_mutation_field_leaves_the_others(embedded_server: ServerProcess) -> None:
    query = """mutation {
      bad: markNotificationsRead(ids: ["x"]) { marked }
      good: markNotificationsRead(ids: []) { marked unreadCount }
    }"""
    result = await gql(embedded_server, query, "nw-cy")
    assert result["data"]["bad"] is None and result["data"]["good"]["marked"] == 0
    assert codes(result) == ["BAD_INPUT"]


# -- names behind ids -------------------------------------------------------------------


async def test_user_and_the_people_behind_ids_resolve(embedded_server: ServerProcess) -> None:
    server = embedded_server
    await publish(server, "nw-ada", MATH_101, "Homework")
    who = """query($c: String!) {
      user(id: "nw-ada") { id displayName role institutionId institution { name } }
      announcementPage(channel: $c, first: 1) { rows { authorId author { id displayName role } } }
    }"""
    got = data(await gql(server, who, "nw-cy", c=MATH_101))
    assert got["user"] == {
        "id": "nw-ada",
        "displayName": "Ada Lovelace",
        "role": "TEACHER",
        "institutionId": "northwood",
        "institution": {"name": "Northwood High School"},
    }
    # One root field: the HTTP fast path's direct execution (api/direct.py) answers it.
    alone = data(await gql(server, '{ user(id: "nw-ada") { displayName role } }', "nw-cy"))
    assert alone == {"user": {"displayName": "Ada Lovelace", "role": "TEACHER"}}
    missing = await gql(server, '{ user(id: "rv-finn") { id } }', "nw-cy")
    assert missing["data"] == {"user": None} and codes(missing) == ["NOT_FOUND"]
    (row,) = got["announcementPage"]["rows"]
    assert row == {
        "authorId": "nw-ada",
        "author": {"id": "nw-ada", "displayName": "Ada Lovelace", "role": "TEACHER"},
    }
    sent = data(await gql(server, NOTIFY, "nw-admin", user="nw-bo", title="See me"))
    inbox = """{ notificationPage(first: 1) { rows { id senderId sender { displayName } } } }"""
    (note,) = data(await gql(server, inbox, "nw-bo"))["notificationPage"]["rows"]
    assert note == {
        "id": sent["notify"]["notification"]["id"],
        "senderId": "nw-admin",
        "sender": {"displayName": "Nora Admin"},
    }
    raised = data(await gql(server, RAISE, "nw-ada", targets=[MATH_101]))["raiseAlert"]
    assert raised["raisedBy"] == raised["raisedById"] == "nw-ada"
    assert raised["raisedByUser"] == {"displayName": "Ada Lovelace", "role": "TEACHER"}


async def test_enums_stand_beside_the_old_strings(embedded_server: ServerProcess) -> None:
    query = """query($c: String!) {
      presence(channel: $c) { members { userId role userRole user { displayName } } }
    }"""
    async with present(embedded_server, "nw-cy", MATH_101):
        got = data(await gql(embedded_server, query, "nw-ada", c=MATH_101))
    assert got["presence"]["members"] == [
        {
            "userId": "nw-cy",
            "role": "student",
            "userRole": "STUDENT",
            "user": {"displayName": "Cy Student"},
        }
    ]


# -- cursor pages: every row reachable, each once -----------------------------------------


async def walk(
    server: ServerProcess, query: str, field: str, user: str, first: int, **variables: Any
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Every page of ``field``, following ``nextCursor`` to the end; and the pages'
    raw answers."""
    pages: list[list[dict[str, Any]]] = []
    answers: list[dict[str, Any]] = []
    after = None
    while True:
        page = data(await gql(server, query, user, first=first, after=after, **variables))[field]
        pages.append(page["rows"])
        answers.append(page)
        after = page["nextCursor"]
        if after is None:
            return pages, answers


async def test_announcement_pages_reach_past_200_once_each(make_server: Make) -> None:
    server = await start(make_server)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        headers = {"Authorization": f"Bearer {token('nw-ada')}"}
        mutation = """mutation($c: String!, $t: String!) {
          publishAnnouncement(input: {channel: $c, title: $t, body: "b"}) { id }
        }"""
        published = []
        for i in range(230):
            body = {"query": mutation, "variables": {"c": MATH_101, "t": f"n{i}"}}
            response = await client.post("/graphql", json=body, headers=headers)
            published.append(int(response.json()["data"]["publishAnnouncement"]["id"]))
    listed = "query($c: String!) { announcements(channel: $c, last: 200) { id } }"
    old = data(await gql(server, listed, "nw-cy", c=MATH_101))
    assert len(old["announcements"]) == 200  # the deprecated list stops there

    pages, _ = await walk(server, PAGE, "announcementPage", "nw-cy", 100, c=MATH_101)
    assert [len(p) for p in pages] == [100, 100, 30]
    ids = [int(row["id"]) for page in pages for row in page]
    assert ids == sorted(published, reverse=True)  # newest first, no gap, no repeat
    assert {row["author"]["displayName"] for page in pages for row in page} == {"Ada Lovelace"}

    # A publish while paging shifts nothing: the next page continues below the cursor.
    first = data(await gql(server, PAGE, "nw-cy", c=MATH_101, first=100, after=None))
    await publish(server, "nw-ada", MATH_101, "meanwhile")
    after = first["announcementPage"]["nextCursor"]
    second = data(await gql(server, PAGE, "nw-cy", c=MATH_101, first=100, after=after))
    assert [int(r["id"]) for r in second["announcementPage"]["rows"]] == ids[100:200]

    for cursor in ("nonsense", "bm90aWZpY2F0aW9uOjU"):  # the second: a notification cursor
        bad = await gql(server, PAGE, "nw-cy", c=MATH_101, first=10, after=cursor)
        assert bad["data"] == {"announcementPage": None} and codes(bad) == ["BAD_INPUT"]
    for first_ in (0, 201):
        bad = await gql(server, PAGE, "nw-cy", c=MATH_101, first=first_, after=None)
        assert codes(bad) == ["BAD_INPUT"]
    other = await gql(server, PAGE, "rv-finn", c=MATH_101, first=10, after=None)
    assert codes(other) == ["FORBIDDEN"]


async def test_notification_pages_and_the_unread_count(make_server: Make) -> None:
    server = await start(make_server)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        headers = {"Authorization": f"Bearer {token('nw-admin')}"}
        sent = []
        for i in range(230):
            body = {"query": NOTIFY, "variables": {"user": "nw-cy", "title": f"n{i}"}}
            response = await client.post("/graphql", json=body, headers=headers)
            sent.append(int(response.json()["data"]["notify"]["notification"]["id"]))

    pages, answers = await walk(server, INBOX, "notificationPage", "nw-cy", 200)
    assert [len(p) for p in pages] == [200, 30]
    assert [int(r["id"]) for p in pages for r in p] == sorted(sent, reverse=True)
    assert {a["unreadCount"] for a in answers} == {230}
    assert all(r["senderId"] == "nw-admin" and r["readAt"] is None for p in pages for r in p)

    newest = [r["id"] for r in pages[0][:3]]
    marked = data(await gql(server, MARK, "nw-cy", ids=[*newest, "999999"]))
    payload = marked["markNotificationsRead"]
    assert payload["marked"] == 3 and payload["unreadCount"] == 227
    assert [n["id"] for n in payload["notifications"]] == newest  # yours only, newest first
    assert all(n["readAt"] is not None for n in payload["notifications"])
    again = data(await gql(server, MARK, "nw-cy", ids=newest))["markNotificationsRead"]
    assert again["marked"] == 0 and again["unreadCount"] == 227
    # The deprecated mutation still answers with its count.
    old = data(await gql(server, "mutation($ids: [ID!]!) { markRead(ids: $ids) }", "nw-cy",
                         ids=[pages[1][0]["id"]]))  # fmt: skip
    assert old == {"markRead": 1}

    unread, answers = await walk(server, INBOX, "notificationPage", "nw-cy", 100, unread=True)
    assert sum(len(p) for p in unread) == 226 and {a["unreadCount"] for a in answers} == {226}
    # Another user's view of the same ids: nothing of theirs, nothing changed.
    dee = data(await gql(server, MARK, "nw-dee", ids=newest))["markNotificationsRead"]
    assert dee == {"marked": 0, "unreadCount": 0, "notifications": []}


# -- mutation payloads that update what a client cache holds -------------------------------


async def test_acknowledge_returns_the_updated_alert(embedded_server: ServerProcess) -> None:
    server = embedded_server
    alert_id = data(await gql(server, RAISE, "nw-ada", targets=[MATH_101]))["raiseAlert"]["id"]
    # nw-cy is targeted, not a manager: the alert with their acknowledgement, no roll call.
    cy = data(await gql(server, ACK, "nw-cy", id=alert_id))["acknowledgeAlert"]
    assert cy["user"] == {"displayName": "Cy Student"}
    assert cy["alert"]["id"] == alert_id and cy["alert"]["state"] == "OPEN"
    assert cy["alert"]["acknowledgedByMeAt"] == cy["acknowledgedAt"]
    assert cy["alert"]["rollCall"] is None
    # nw-ada raised it (a manager) and is targeted: the updated roll call comes back.
    ada = data(await gql(server, ACK, "nw-ada", id=alert_id))["acknowledgeAlert"]
    assert ada["alert"]["rollCall"] == {"acknowledgedCount": 2, "pendingCount": 0}
    # Query.alert agrees, per viewer.
    seen = "query($id: ID!) { alert(id: $id) { acknowledgedByMeAt } }"
    assert data(await gql(server, seen, "nw-cy", id=alert_id))["alert"]["acknowledgedByMeAt"]
    admin = data(await gql(server, seen, "nw-admin", id=alert_id))  # not targeted
    assert admin["alert"]["acknowledgedByMeAt"] is None

    resolve = """mutation($id: ID!) {
      resolveAlert(alertId: $id) { id state resolvedBy resolvedById resolvedByUser { id } }
    }"""
    done = data(await gql(server, resolve, "nw-admin", id=alert_id))["resolveAlert"]
    assert done == {
        "id": alert_id,
        "state": "RESOLVED",
        "resolvedBy": "nw-admin",
        "resolvedById": "nw-admin",
        "resolvedByUser": {"id": "nw-admin"},
    }


# -- the `channel` argument, on every protocol and path ------------------------------------


async def test_channel_position_takes_either_argument(embedded_server: ServerProcess) -> None:
    query = """query($c: String!) {
      a: channelPosition(channel: $c) { offset epoch }
      b: channelPosition(name: $c) { offset epoch }
    }"""
    got = data(await gql(embedded_server, query, "nw-cy", c=MATH_101))
    assert got["a"] == got["b"]
    for arguments in (f'channel: "{MATH_101}", name: "{MATH_101}"', ""):
        args = f"({arguments})" if arguments else ""
        result = await gql(
            embedded_server, f"{{ me {{ id }} channelPosition{args} {{ offset }} }}", "nw-cy"
        )
        assert result["data"] == {"me": {"id": "nw-cy"}, "channelPosition": None}
        assert codes(result) == ["BAD_INPUT"]


@PROTOCOLS
async def test_the_channel_argument_subscribes_and_resumes(
    embedded_server: ServerProcess, protocol: str
) -> None:
    """graphql-transport-ws takes the multiplexed path (unless this pass runs the
    stock paths), graphql-ws Strawberry's; both give the same events, resumes too."""
    server = embedded_server
    where = "query($c: String!) { channelPosition(channel: $c) { offset epoch } }"
    position = data(await gql(server, where, "nw-cy", c=MATH_101))["channelPosition"]
    await publish(server, "nw-ada", MATH_101, "missed")
    before = await asyncio.to_thread(groups, server)
    async with connect(server.ws_url, protocol) as live, connect(server.ws_url, protocol) as back:
        for client in (live, back):
            assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
        await live.subscribe(LIVE, {"c": MATH_101})
        since = {"offset": position["offset"], "epoch": position["epoch"]}
        resume = LIVE.replace("$c: String!", "$c: String!, $s: PositionInput").replace(
            "channel(channel: $c)", "channel(channel: $c, since: $s)"
        )
        await back.subscribe(resume, {"c": MATH_101, "s": since})
        missed = (await back.next_data())["channel"]
        assert missed["type"] == "ANNOUNCEMENT" and missed["kind"] == "announcement"
        assert missed["announcement"]["title"] == "missed"
        await asyncio.sleep(0.2)
        muxed = protocol == TRANSPORT_WS and not stock_only()
        assert await asyncio.to_thread(groups, server) == before + (2 if muxed else 0)
        await publish(server, "nw-ada", MATH_101, "live")
        a, b = (await live.next_data())["channel"], (await back.next_data())["channel"]
        assert a == b and a["announcement"]["title"] == "live" and a["type"] == "ANNOUNCEMENT"
        assert a["offset"] == missed["offset"] + 1


@PROTOCOLS
async def test_a_selection_that_reads_the_database_takes_the_stock_path(
    embedded_server: ServerProcess, protocol: str
) -> None:
    """``author`` is resolved by a coroutine; a multiplexed group executes
    synchronously, so such a subscription is served per subscriber, on both
    protocols, with the same answer."""
    server = embedded_server
    before = await asyncio.to_thread(groups, server)
    async with connect(server.ws_url, protocol) as client:
        assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
        await client.subscribe(LIVE_WITH_AUTHOR, {"c": MATH_101})
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(groups, server) == before
        await publish(server, "nw-ada", MATH_101, "by Ada")
        got = (await client.next_data())["channel"]
    assert got == {
        "type": "ANNOUNCEMENT",
        "announcement": {
            "title": "by Ada",
            "author": {"displayName": "Ada Lovelace", "role": "TEACHER"},
        },
    }


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(
    "arguments", [f'channel: "{MATH_101}", name: "{MATH_101}"', "name: null", ""]
)
async def test_both_or_neither_channel_argument_is_bad_input(
    embedded_server: ServerProcess, protocol: str, arguments: str
) -> None:
    args = f"({arguments})" if arguments else ""
    async with connect(embedded_server.ws_url, protocol) as client:
        assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
        await client.subscribe(f"subscription {{ channel{args} {{ offset }} }}")
        message = await client.recv()
        assert message["type"] in ("next", "data"), message
        assert message["payload"]["data"] is None
        assert error_codes(message) == ["BAD_INPUT"]
        assert (await client.recv())["type"] == "complete"


@pytest.mark.parametrize(
    ("selection", "shared"),
    [
        ("type announcement { title }", True),
        ("type announcement { author { displayName } }", False),
    ],
)
async def test_the_channel_argument_over_sse(
    embedded_server: ServerProcess, selection: str, shared: bool
) -> None:
    """SSE subscriptions the planner accepts join the multiplexer's groups; one that
    reads the database is served per subscriber. Both answer with `channel:`."""
    server = embedded_server
    query = f"subscription($c: String!) {{ channel(channel: $c) {{ {selection} }} }}"
    before = await asyncio.to_thread(groups, server)
    body = {"query": query, "variables": {"c": MATH_101}}
    async with sse(server, "nw-cy", body) as response:
        assert response.status_code == 200
        await asyncio.sleep(0.3)
        grouped = await asyncio.to_thread(groups, server)
        await publish(server, "nw-ada", MATH_101, "over sse")
        kind, payload = await asyncio.wait_for(anext(events(response)), 10)
    assert grouped == before + (1 if shared and not stock_only() else 0)
    assert kind == "next", payload
    event = payload["data"]["channel"]
    assert event["type"] == "ANNOUNCEMENT"
    assert event["announcement"] == (
        {"title": "over sse"} if shared else {"author": {"displayName": "Ada Lovelace"}}
    )
