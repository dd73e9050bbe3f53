"""Notifications in embedded mode: live on user:{u}, persisted per recipient, read state."""

from __future__ import annotations

import asyncio

from tests.gqlws import connect
from tests.integration.test_alerts import gql
from tests.presence_client import codes
from tests.server import ServerProcess, token

NOTIFY = """
mutation($user: ID, $channel: String, $title: String!) {
  notify(input: {userId: $user, channel: $channel, title: $title, body: "see office"}) {
    recipients notification { id channel senderId title }
  }
}"""
INBOX = """
query($unread: Boolean!) { notifications(unreadOnly: $unread) { id title readAt } }"""
MARK = "mutation($ids: [ID!]!) { markRead(ids: $ids) }"
LIVE = """
subscription($name: String!) {
  channel(name: $name) { kind notification { id title senderId } }
}"""
STUDENTS = "institution:northwood:role:student"


async def test_notifications_are_delivered_live_and_read_per_user(
    embedded_server: ServerProcess,
) -> None:
    server = embedded_server
    async with connect(server.ws_url) as cy, connect(server.ws_url) as dee:
        for client, user, channel in ((cy, "nw-cy", "user:nw-cy"), (dee, "nw-dee", STUDENTS)):
            assert (await client.init(token(user)))["type"] == "connection_ack"
            await client.subscribe(LIVE, {"name": channel})
        await asyncio.sleep(0.2)
        direct = await gql(server, NOTIFY, "nw-admin", user="nw-cy", title="Hi Cy")
        sent = direct["data"]["notify"]
        assert sent["recipients"] == 1 and sent["notification"]["channel"] == "user:nw-cy"
        live = (await cy.next_data())["channel"]
        assert live["kind"] == "notification"
        assert live["notification"] == {
            "id": sent["notification"]["id"],
            "title": "Hi Cy",
            "senderId": "nw-admin",
        }
        role = await gql(server, NOTIFY, "nw-bell", channel=STUDENTS, title="Buses late")
        assert role["data"]["notify"]["recipients"] == 2  # nw-cy and nw-dee
        assert (await dee.next_data())["channel"]["notification"]["title"] == "Buses late"

    inbox = (await gql(server, INBOX, "nw-cy", unread=False))["data"]["notifications"]
    assert [n["title"] for n in inbox] == ["Buses late", "Hi Cy"]  # newest first
    newest = inbox[0]["id"]
    assert (await gql(server, MARK, "nw-cy", ids=[newest]))["data"] == {"markRead": 1}
    assert (await gql(server, MARK, "nw-cy", ids=[newest]))["data"] == {"markRead": 0}
    unread = (await gql(server, INBOX, "nw-cy", unread=True))["data"]["notifications"]
    assert [n["title"] for n in unread] == ["Hi Cy"]
    read = (await gql(server, INBOX, "nw-cy", unread=False))["data"]["notifications"]
    assert read[0]["readAt"] is not None
    # Read state is per person: Dee still has hers unread.
    dees = (await gql(server, INBOX, "nw-dee", unread=True))["data"]["notifications"]
    assert [n["title"] for n in dees] == ["Buses late"]


async def test_who_may_notify_and_bad_input(embedded_server: ServerProcess) -> None:
    server = embedded_server
    for user, variables in [
        ("nw-ada", {"user": "nw-cy"}),  # teachers do not notify
        ("nw-cy", {"channel": STUDENTS}),
        ("nw-admin", {"user": "rv-finn"}),  # another institution's user
        ("nw-admin", {"channel": "institution:riverside:role:student"}),
    ]:
        result = await gql(server, NOTIFY, user, title="x", **variables)
        assert codes(result) == ["FORBIDDEN"], (user, variables, result)
    for variables in [
        {"user": "nw-cy", "channel": STUDENTS},  # both
        {},  # neither
        {"channel": "institution:northwood"},  # not a role channel
    ]:
        result = await gql(server, NOTIFY, "nw-admin", title="x", **variables)
        assert codes(result) == ["BAD_INPUT"], (variables, result)
    empty = await gql(server, NOTIFY, "nw-admin", user="nw-cy", title=" ")
    assert codes(empty) == ["BAD_INPUT"]
    assert codes(await gql(server, MARK, "nw-cy", ids=["x"])) == ["BAD_INPUT"]
    assert codes(await gql(server, INBOX, None, unread=False)) == ["UNAUTHENTICATED"]
