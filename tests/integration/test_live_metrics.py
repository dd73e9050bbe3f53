"""liveMetrics and analytics alert rules over real WebSockets, in embedded mode.

Embedded mode runs the same aggregator and alert rules as ``edumatrix consume``
(the in-process log feeds it), and its memory bus carries the alert to the
admin channel, so one server process exercises the whole path.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from api.auth import TokenService
from streams.acl import Role
from tests.gqlws import connect
from tests.integration.test_analytics_api import SERIES, TRACK, window
from tests.server import TOKENS, ServerProcess, token

LIVE = """subscription($i: ID!) {
  liveMetrics(institutionId: $i) {
    at activeUsers errorsPerMinute messagesDeliveredPerMinute events: eventsPerMinute { key count }
  }
}"""
CHANNEL = "subscription($name: String!) { channel(name: $name) { kind channel data } }"


def error_codes(message: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in message["payload"].get("errors", [])]


async def test_live_metrics_pushes_new_counts_at_most_once_a_second(
    embedded_server: ServerProcess,
) -> None:
    kind = f"live_{secrets.token_hex(3)}"  # a type no other test records
    async with connect(embedded_server.ws_url) as admin:
        assert (await admin.init(token("nw-admin")))["type"] == "connection_ack"
        await admin.subscribe(LIVE, {"i": "northwood"})
        pushes = [(await admin.next_data())["liveMetrics"]]  # the first snapshot at once
        for user in ("nw-cy", "nw-dee", "nw-cy"):
            result = await asyncio.to_thread(
                embedded_server.graphql, TRACK, {"t": kind}, as_user=user
            )
            assert result["data"] == {"trackActivity": True}
        counts: dict[str, int] = {}
        deadline = time.monotonic() + 15
        while counts.get(f"activity.{kind}") != 3 and time.monotonic() < deadline:
            pushes.append((await admin.next_data(wait=5))["liveMetrics"])
            counts = {c["key"]: c["count"] for c in pushes[-1]["events"]}
        assert counts.get(f"activity.{kind}") == 3, pushes[-1]
        assert pushes[-1]["activeUsers"] >= 2  # nw-cy and nw-dee, at least
        stamps = [datetime.fromisoformat(p["at"]) for p in pushes]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
        assert len(gaps) >= 1 and min(gaps) >= 0.99, gaps  # the once-a-second cap


async def test_live_metrics_is_for_admins_of_the_institution(
    embedded_server: ServerProcess,
) -> None:
    for user, code in (("nw-cy", "FORBIDDEN"), ("rv-admin", "NOT_FOUND")):
        async with connect(embedded_server.ws_url) as client:
            await client.init(token(user))
            await client.subscribe(LIVE, {"i": "northwood"})
            message = await client.recv()
            assert message["type"] == "next" and message["payload"]["data"] is None
            assert error_codes(message) == [code]
            assert (await client.recv())["type"] == "complete"


def forged(sub: str, institution: str = "northwood") -> str:
    """A token with real-looking claims but the wrong key: fails verification."""
    wrong = TokenService(algorithm="HS256", verify_key="w" * 48, signing_key="w" * 48)
    return wrong.mint(sub=sub, role=Role.STUDENT, institution=institution, ttl_seconds=600)


def expired(sub: str) -> str:
    """A token we signed, expired: refused, but it truly names its user."""
    return TOKENS.mint(sub=sub, role=Role.STUDENT, institution="northwood", ttl_seconds=-120)


async def fail_logins(server: ServerProcess, bad: str, times: int) -> None:
    for _ in range(times):
        response = await asyncio.to_thread(
            httpx.post,
            f"{server.url}/graphql",
            json={"query": "{ __typename }"},
            headers={"Authorization": f"Bearer {bad}"},
        )
        assert response.status_code in (200, 401), response.text


async def test_failed_logins_raise_an_alert_on_the_admin_channel(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(alert_failed_logins_per_minute="2")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with connect(server.ws_url) as admin:
        assert (await admin.init(token("nw-admin")))["type"] == "connection_ack"
        await admin.subscribe(CHANNEL, {"name": "institution:northwood:role:admin"})
        await asyncio.sleep(0.3)  # the subscription is registered before we fail logins
        # 5 failures: even split by a minute boundary, one minute holds 3 > threshold 2.
        await fail_logins(server, expired(f"user-{secrets.token_hex(2)}"), 5)
        message = await admin.next_data(wait=10)
        event = message["channel"]
        assert (event["kind"], event["channel"]) == (
            "analytics.alert",
            "institution:northwood:role:admin",
        )
        alert = event["data"]["alert"]
        assert alert["rule"] == "failed_logins"
        assert alert["threshold"] == 2 and alert["value"] >= 3
        try:  # recorded once per (rule, user, minute): the 4th and 5th raise nothing new
            extra = await admin.recv(wait=1.5)
        except TimeoutError:
            extra = None
        assert extra is None, extra


async def test_forged_tokens_write_nothing_into_the_institution_they_name(
    make_server: Callable[..., ServerProcess],
) -> None:
    """Anyone can put another school's ids into an unsigned token: such failures
    must raise no alert there and add nothing to its analytics. The control, a
    signed but expired token, is counted (the test above)."""
    server = make_server(alert_failed_logins_per_minute="2")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    async with connect(server.ws_url) as admin:
        assert (await admin.init(token("rv-admin")))["type"] == "connection_ack"
        await admin.subscribe(CHANNEL, {"name": "institution:riverside:role:admin"})
        await asyncio.sleep(0.3)
        await fail_logins(server, forged("rv-finn", institution="riverside"), 12)
        await fail_logins(server, expired("nw-late"), 1)  # counted: proves the pipeline ran
        try:
            extra = await admin.recv(wait=2.0)
        except TimeoutError:
            extra = None
        assert extra is None, extra
    cases = (("northwood", "nw-admin", 1), ("riverside", "rv-admin", 0))
    for institution, admin_user, expected in cases:
        counted = None
        for _ in range(50):
            variables: dict[str, object] = {"i": institution, **window()}
            result = server.graphql(SERIES, variables, as_user=admin_user)
            top = {c["key"]: c["count"] for c in result["data"]["topEvents"]}  # type: ignore[index]
            counted = top.get("auth.failed", 0)
            if counted == expected:
                break
            await asyncio.sleep(0.1)
        assert counted == expected, (institution, top)


async def test_client_errors_do_not_trip_the_errors_alert(
    make_server: Callable[..., ServerProcess],
) -> None:
    """A student's forbidden requests are counted, as client errors, but they do
    not raise the institution's errors/min alert (before, 60 of them did)."""
    server = make_server(alert_errors_per_minute="2")
    server.cli("migrate")
    server.cli("seed-demo")
    server.start()
    publish = "mutation($i: PublishAnnouncementInput!) { publishAnnouncement(input: $i) { id } }"
    given = {"channel": "institution:northwood", "title": "t", "body": "b"}
    async with connect(server.ws_url) as admin:
        assert (await admin.init(token("nw-admin")))["type"] == "connection_ack"
        await admin.subscribe(CHANNEL, {"name": "institution:northwood:role:admin"})
        await asyncio.sleep(0.3)
        for _ in range(6):
            denied = await asyncio.to_thread(server.graphql, publish, {"i": given}, as_user="nw-cy")
            assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # type: ignore[index]
        try:
            extra = await admin.recv(wait=2.0)
        except TimeoutError:
            extra = None
        assert extra is None, extra
    top: dict[str, int] = {}
    for _ in range(50):
        variables: dict[str, object] = {"i": "northwood", **window()}
        result = server.graphql(SERIES, variables, as_user="nw-admin")
        top = {c["key"]: c["count"] for c in result["data"]["topEvents"]}  # type: ignore[index]
        if top.get("client_error.forbidden") == 6:
            break
        await asyncio.sleep(0.1)
    assert top.get("client_error.forbidden") == 6, top
    assert not [key for key in top if key.startswith("error.")], top
