"""The audit log an inspector gets: every row says who (a verified user, or nobody),
from where (client IP, user agent), in which request or connection, did what to
what and how it went; the database refuses to change or remove rows; admins read
their own institution's rows and nobody else's.

Real server processes (SQLite embedded, Postgres + Redis cluster), real WebSockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import websockets
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from db import repo
from db.engine import create_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import AuditEntry
from tests.gqlws import LEGACY_WS, TRANSPORT_WS, Closed, GraphQLWS, connect
from tests.server import ServerProcess, token

Make = Callable[..., ServerProcess]
Row = dict[str, Any]

PUBLISH = """
mutation($channel: String!) {
  publishAnnouncement(input: {channel: $channel, title: "Audit me", body: "b"}) { id }
}"""
AUDIT_LOG = """
query($filter: AuditFilter, $after: String, $first: Int!) {
  auditLog(filter: $filter, after: $after, first: $first) {
    rows {
      id at actorId actorRole institutionId action target outcome
      clientIp userAgent requestId details
    }
    nextCursor
  }
}"""
LIVE_METRICS = "subscription($i: ID!) { liveMetrics(institutionId: $i) { activeUsers } }"
CHANNEL = "subscription($name: String!) { channel(name: $name) { kind } }"
FORGED_SECRET = "not-the-server-secret-" + "x" * 40
UA = "inspector-test/1.0"


# -- helpers -------------------------------------------------------------------------


def sqlite_url(server: ServerProcess) -> str:
    return f"sqlite+aiosqlite:///{server.env['EDUMATRIX_DATA_DIR']}/edumatrix.db"


async def _read(url: str) -> list[Row]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.id))
            return [dict(r._mapping) for r in result]
    finally:
        await engine.dispose()


def rows(url: str, **where: Any) -> list[Row]:
    return [r for r in asyncio.run(_read(url)) if all(r[k] == v for k, v in where.items())]


def wait_rows(url: str, count: int = 1, timeout: float = 10.0, **where: Any) -> list[Row]:
    """Rows written by the queued writer (WebSocket, trackActivity) arrive shortly after."""
    deadline = time.monotonic() + timeout
    found = rows(url, **where)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        found = rows(url, **where)
    assert len(found) >= count, (where, found)
    return found


def post(
    server: ServerProcess,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    as_user: str | None = None,
    bearer: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {"User-Agent": UA, **(headers or {})}
    if as_user is not None:
        sent["Authorization"] = f"Bearer {token(as_user)}"
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    response = httpx.post(
        f"{server.url}/graphql",
        json={"query": query, "variables": variables or {}},
        headers=sent,
        timeout=10,
    )
    return response


def codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json().get("errors", [])]


def forged(sub: str, inst: str) -> str:
    """A well-formed token the server did not sign, claiming to be ``sub``."""
    exp = datetime.now(UTC) + timedelta(minutes=5)
    claims = {"sub": sub, "inst": inst, "role": "admin", "exp": exp}
    return jwt.encode(claims, FORGED_SECRET, algorithm="HS256")


def start(make_server: Make, **settings: str) -> ServerProcess:
    server = make_server(**settings)
    server.cli("migrate")
    server.cli("seed-demo")
    return server.start()


@pytest.fixture
def server(make_server: Make) -> ServerProcess:
    return start(make_server)


# -- what each kind of event leaves behind --------------------------------------------


def test_publish_row_has_actor_origin_and_the_responses_request_id(server: ServerProcess) -> None:
    url = sqlite_url(server)
    response = post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="nw-admin")
    announcement = response.json()["data"]["publishAnnouncement"]["id"]
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    (row,) = rows(url, action="publishAnnouncement")
    assert row["actor_id"] == "nw-admin" and row["actor_role"] == "admin"
    assert row["institution_id"] == "northwood"
    assert row["target"] == "institution:northwood" and row["outcome"] == "ok"
    assert row["client_ip"] == "127.0.0.1" and row["user_agent"] == UA
    assert row["request_id"] == request_id
    assert row["detail"] == {"announcementId": int(announcement)}
    assert isinstance(row["at"], datetime)

    # Every request has its own id; a hostile user agent is cut to size.
    again = post(
        server,
        PUBLISH,
        {"channel": "institution:northwood"},
        as_user="nw-admin",
        headers={"User-Agent": "A" * 5000},
    )
    assert again.headers["x-request-id"] != request_id
    (second,) = rows(url, request_id=again.headers["x-request-id"])
    assert second["user_agent"] == "A" * 256


def test_denials_and_other_institutions_ids_are_audited(server: ServerProcess) -> None:
    url = sqlite_url(server)
    denied = post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="nw-dee")
    assert codes(denied) == ["FORBIDDEN"]
    (row,) = rows(url, action="publish", outcome="denied")
    assert (row["actor_id"], row["institution_id"], row["target"]) == (
        "nw-dee",
        "northwood",
        "institution:northwood",
    )
    assert row["client_ip"] == "127.0.0.1"
    assert row["request_id"] == denied.headers["x-request-id"]

    # FORBIDDEN from analytics (a teacher) and systemStatus (a student).
    span = '(institutionId: "northwood", from: "2026-01-01T00:00:00Z", to: "2026-01-02T00:00:00Z")'
    assert codes(post(server, f"{{ activeUsers{span} }}", as_user="nw-ada")) == ["FORBIDDEN"]
    assert codes(post(server, "{ systemStatus { eventLog } }", as_user="nw-cy")) == ["FORBIDDEN"]
    assert rows(url, action="activeUsers", outcome="denied", actor_id="nw-ada")
    assert rows(url, action="systemStatus", outcome="denied", actor_id="nw-cy")

    # NOT_FOUND on riverside's ids, asked by northwood's admin.
    other = span.replace("northwood", "riverside")
    for query, action in [
        ('{ institution(id: "riverside") { id } }', "institution"),
        ('{ onlineCount(institutionId: "riverside") }', "onlineCount"),
        (f"{{ activeUsers{other} }}", "activeUsers"),
        (f"{{ topEvents{other} {{ key }} }}", "topEvents"),
    ]:
        response = post(server, query, as_user="nw-admin")
        assert codes(response) == ["NOT_FOUND"], query
        (found,) = rows(url, action=action, outcome="not_found")
        assert found["actor_id"] == "nw-admin" and found["institution_id"] == "northwood"
        assert found["target"] == "institution:riverside"
        assert found["request_id"] == response.headers["x-request-id"]

    raised = post(
        server,
        'mutation { raiseAlert(input: {institutionId: "riverside", severity: INFO, '
        'title: "Drill", body: "b"}) { id } }',
        as_user="rv-admin",
    )
    alert_id = raised.json()["data"]["raiseAlert"]["id"]
    query = f'{{ alert(id: "{alert_id}") {{ id }} }}'
    assert codes(post(server, query, as_user="nw-admin")) == ["NOT_FOUND"]
    (found,) = rows(url, action="alert", outcome="not_found")
    assert (found["actor_id"], found["target"]) == ("nw-admin", f"alert:{alert_id}")
    assert rows(url, action="raiseAlert", outcome="ok", actor_id="rv-admin")
    # Mutations on it too, audited in the mutation's own transaction.
    ack = f'mutation {{ acknowledgeAlert(alertId: "{alert_id}") {{ alertId }} }}'
    assert codes(post(server, ack, as_user="nw-cy")) == ["NOT_FOUND"]
    (found,) = rows(url, action="acknowledgeAlert", outcome="not_found")
    assert (found["actor_id"], found["target"]) == ("nw-cy", f"alert:{alert_id}")
    assert found["client_ip"] == "127.0.0.1" and found["request_id"]


def test_failed_authentication_has_no_actor_but_an_ip_and_the_claim(
    server: ServerProcess,
) -> None:
    url = sqlite_url(server)
    response = post(server, "{ me { id } }", bearer=forged("rv-admin", "riverside"))
    assert codes(response) == ["UNAUTHENTICATED"] or response.status_code in (401, 403)
    (row,) = rows(url, action="authenticate", target="http")
    assert row["outcome"] == "failed"
    assert row["actor_id"] is None and row["actor_role"] is None
    assert row["institution_id"] is None  # unverified: it names nobody's institution
    assert row["client_ip"] == "127.0.0.1" and row["user_agent"] == UA
    assert row["detail"]["claimed"] == "rv-admin"
    assert row["detail"]["claimedInstitution"] == "riverside"
    assert row["request_id"] == response.headers["x-request-id"]

    async def over_websocket() -> None:
        async with connect(server.ws_url) as client:
            with pytest.raises(Closed):
                await client.init(forged("nw-admin", "northwood"))
                await client.recv()

    asyncio.run(over_websocket())
    (ws_row,) = rows(url, action="authenticate", target="websocket")
    assert ws_row["actor_id"] is None and ws_row["client_ip"] == "127.0.0.1"
    assert ws_row["detail"]["claimed"] == "nw-admin"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
def test_websocket_open_close_and_its_refusals_share_the_connection_id(
    server: ServerProcess, protocol: str
) -> None:
    url = sqlite_url(server)

    async def refused(client: GraphQLWS, query: str, variables: dict[str, Any]) -> None:
        op = await client.subscribe(query, variables)
        while (message := await client.recv())["type"] not in ("complete", "error"):
            assert message["id"] == op and message["payload"].get("errors"), message

    async def session() -> None:
        async with connect(server.ws_url, protocol) as client:
            assert (await client.init(token("nw-admin")))["type"] == "connection_ack"
            await refused(client, LIVE_METRICS, {"i": "riverside"})
            await refused(client, CHANNEL, {"name": "institution:riverside"})

    asyncio.run(session())
    (opened,) = wait_rows(url, action="connect")
    (closed,) = wait_rows(url, action="disconnect")
    connection = opened["request_id"]
    assert connection and closed["request_id"] == connection
    for row in (opened, closed):
        assert (row["actor_id"], row["institution_id"], row["target"]) == (
            "nw-admin",
            "northwood",
            "websocket",
        )
        assert row["client_ip"] == "127.0.0.1" and row["outcome"] == "ok"
    assert closed["detail"]["code"] == 1000 and closed["detail"]["closedBy"] == "client"
    assert closed["detail"]["protocol"] == protocol
    assert closed["detail"]["durationMs"] >= 0
    (live,) = rows(url, action="liveMetrics", outcome="not_found")
    (sub,) = rows(url, action="subscribe", outcome="denied")
    assert live["request_id"] == sub["request_id"] == connection
    assert opened["id"] < closed["id"]


def test_server_side_close_code_is_recorded(server: ServerProcess) -> None:
    url = sqlite_url(server)

    async def expiring() -> int | None:
        async with connect(server.ws_url) as client:
            assert (await client.init(token("nw-cy", ttl=2)))["type"] == "connection_ack"
            try:
                while True:
                    await client.recv(wait=10)
            except Closed as closed:
                return closed.code
        return None

    assert asyncio.run(expiring()) == 4403
    (closed,) = wait_rows(url, action="disconnect")
    assert closed["actor_id"] == "nw-cy"
    assert closed["detail"]["code"] == 4403 and closed["detail"]["closedBy"] == "server"


def test_track_activity_is_audited(server: ServerProcess) -> None:
    url = sqlite_url(server)
    response = post(server, 'mutation { trackActivity(input: {type: "click"}) }', as_user="nw-cy")
    assert response.json()["data"] == {"trackActivity": True}
    (row,) = wait_rows(url, action="trackActivity")
    assert (row["actor_id"], row["institution_id"], row["target"], row["outcome"]) == (
        "nw-cy",
        "northwood",
        "activity.click",
        "ok",
    )
    assert row["request_id"] == response.headers["x-request-id"]
    assert row["client_ip"] == "127.0.0.1"


# -- client IP behind proxies ---------------------------------------------------------


def test_x_forwarded_for_is_honoured_only_from_a_trusted_proxy(make_server: Make) -> None:
    behind = start(make_server, trusted_proxies="127.0.0.1/32, 10.0.0.0/8")
    direct = start(make_server, data_dir=str(behind.workdir / "direct"))  # a database of its own
    # The client wrote 6.6.6.6 itself; the (trusted) proxy appended what it saw.
    chain = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.2.3"}
    for srv in (behind, direct):
        post(srv, "{ me { id } }", bearer=forged("nw-admin", "northwood"), headers=chain)
    (trusted,) = rows(sqlite_url(behind), action="authenticate")
    (untrusted,) = rows(sqlite_url(direct), action="authenticate")
    assert trusted["client_ip"] == "198.51.100.7"
    assert untrusted["client_ip"] == "127.0.0.1"

    async def websocket_through_proxy() -> None:
        async with websockets.connect(
            behind.ws_url,
            subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
            additional_headers={"X-Forwarded-For": "203.0.113.50"},
        ) as ws:
            client = GraphQLWS(ws, TRANSPORT_WS)
            assert (await client.init(token("nw-cy")))["type"] == "connection_ack"

    asyncio.run(websocket_through_proxy())
    (opened,) = wait_rows(sqlite_url(behind), action="connect")
    assert opened["client_ip"] == "203.0.113.50"


# -- the auditLog query -------------------------------------------------------------------


def page_through(server: ServerProcess, user: str, first: int, **filter: Any) -> list[Row]:
    seen: list[Row] = []
    after = None
    for _ in range(100):
        response = post(
            server,
            AUDIT_LOG,
            {"filter": filter or None, "after": after, "first": first},
            as_user=user,
        )
        body = response.json()
        assert "errors" not in body, body
        page = body["data"]["auditLog"]
        assert len(page["rows"]) <= first
        seen.extend(page["rows"])
        after = page["nextCursor"]
        if after is None:
            return seen
    raise AssertionError("pagination did not end")


def test_audit_log_pages_newest_first_and_never_crosses_institutions(
    server: ServerProcess,
) -> None:
    url = sqlite_url(server)
    for _ in range(3):
        post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="nw-admin")
    post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="nw-dee")  # denied
    for _ in range(2):
        post(server, PUBLISH, {"channel": "institution:riverside"}, as_user="rv-admin")
    post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="rv-admin")  # denied
    post(server, "{ me { id } }", bearer=forged("nw-admin", "northwood"))  # no institution

    listed = page_through(server, "nw-admin", first=2)
    ids = [int(r["id"]) for r in listed]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert {r["institutionId"] for r in listed} == {"northwood"}
    assert not any(str(r["actorId"] or "").startswith("rv-") for r in listed)
    northwood = {r["id"] for r in rows(url, institution_id="northwood")}
    assert set(ids) == northwood and len(ids) == 4
    newest = listed[0]
    assert newest["clientIp"] == "127.0.0.1" and newest["userAgent"] == UA
    assert newest["requestId"] and newest["outcome"] in ("OK", "DENIED")

    # Riverside's admin sees riverside's rows, including its own denial in northwood:
    # rows belong to the actor's institution.
    theirs = page_through(server, "rv-admin", first=500)
    assert {r["institutionId"] for r in theirs} == {"riverside"} and len(theirs) == 3

    # Failed authentications have no institution: no admin lists them.
    assert not [r for r in listed + theirs if r["action"] == "authenticate"]

    denied = page_through(server, "nw-admin", first=50, outcome="DENIED")
    assert [(r["action"], r["actorId"]) for r in denied] == [("publish", "nw-dee")]
    assert len(page_through(server, "nw-admin", first=50, actor="nw-admin")) == 3
    assert len(page_through(server, "nw-admin", first=50, action="publishAnnouncement")) == 3
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert page_through(server, "nw-admin", first=50, since=future) == []
    assert len(page_through(server, "nw-admin", first=50, until=future)) == 4

    # Bad arguments are the caller's error.
    bad = post(server, AUDIT_LOG, {"first": 501}, as_user="nw-admin")
    assert codes(bad) == ["BAD_INPUT"]
    bad = post(server, AUDIT_LOG, {"first": 5, "after": "bm9wZQ"}, as_user="nw-admin")
    assert codes(bad) == ["BAD_INPUT"]


def test_audit_log_is_for_admins_only_and_refusals_are_audited(server: ServerProcess) -> None:
    url = sqlite_url(server)
    for user in ("nw-ada", "nw-cy", "nw-bell"):
        response = post(server, AUDIT_LOG, {"first": 5}, as_user=user)
        assert codes(response) == ["FORBIDDEN"], user
        (row,) = rows(url, action="auditLog", actor_id=user)
        assert row["outcome"] == "denied" and row["institution_id"] == "northwood"
    assert codes(post(server, AUDIT_LOG, {"first": 5})) == ["UNAUTHENTICATED"]


# -- append-only, enforced by the database ---------------------------------------------------


async def check_append_only(url: str) -> None:
    """As the application would try it: through the app's own engine and sessions."""
    engine = create_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        actor = repo.Actor("nw-admin", "admin", "northwood", "127.0.0.1", UA, "r" * 32)
        await repo.audit(sessions, actor, "publish", "institution:northwood", "denied")
        attempts = [
            "UPDATE audit_log SET outcome = 'ok'",
            "UPDATE audit_log SET actor_id = NULL WHERE id = 1",
            "DELETE FROM audit_log WHERE actor_id = 'nw-admin'",
            "DELETE FROM audit_log",
        ]
        if engine.dialect.name == "postgresql":
            attempts += ["TRUNCATE audit_log", "TRUNCATE audit_log RESTART IDENTITY CASCADE"]
        for statement in attempts:
            with pytest.raises(DBAPIError, match="append-only"):
                async with sessions() as session, session.begin():
                    await session.execute(text(statement))
        async with engine.connect() as conn:
            left = (await conn.execute(select(AuditEntry.outcome))).scalars().all()
        assert left == ["denied"]
    finally:
        await engine.dispose()


def test_sqlite_refuses_update_and_delete(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    asyncio.run(check_append_only(url))


def test_postgres_refuses_update_delete_and_truncate(pg_url: str) -> None:
    upgrade(pg_url)
    asyncio.run(check_append_only(pg_url))


# The operator's purge procedures, exactly as the README gives them.
SQLITE_PURGE = [
    "BEGIN IMMEDIATE",
    "DROP TRIGGER audit_log_no_delete",
    "DELETE FROM audit_log WHERE at < :cutoff",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
    "COMMIT",
]
POSTGRES_PURGE = [
    "BEGIN",
    "SET LOCAL session_replication_role = replica",
    "DELETE FROM audit_log WHERE at < :cutoff",
    "COMMIT",
]


async def check_purge(url: str, steps: list[str]) -> None:
    engine = create_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        await repo.audit(sessions, repo.Actor(ip="192.0.2.1"), "authenticate", "http", "failed")
        cutoff = datetime.now(UTC) + timedelta(seconds=1)
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for step in steps:
                await conn.execute(text(step), {"cutoff": cutoff} if ":cutoff" in step else {})
        assert await _count(engine) == 0
        # The guard is back (SQLite) or was never off outside that transaction (Postgres).
        await repo.audit(sessions, repo.Actor(ip="192.0.2.1"), "authenticate", "http", "failed")
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM audit_log"))
        assert await _count(engine) == 1
    finally:
        await engine.dispose()


async def _count(engine: Any) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(AuditEntry.id))).all())


def test_documented_purge_works_on_sqlite(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    asyncio.run(check_purge(url, SQLITE_PURGE))


def test_documented_purge_works_on_postgres(pg_url: str) -> None:
    upgrade(pg_url)
    asyncio.run(check_purge(pg_url, POSTGRES_PURGE))


# -- floods are folded into counts ------------------------------------------------------


def test_failed_auth_flood_is_aggregated(make_server: Make) -> None:
    server = start(make_server, audit_failed_auth_per_minute="3")
    bad = forged("nw-admin", "northwood")
    sent = 40
    with httpx.Client(timeout=10) as client:  # loopback, bounded in count
        for _ in range(sent):
            client.post(
                f"{server.url}/graphql",
                json={"query": "{ me { id } }"},
                headers={"Authorization": f"Bearer {bad}"},
            )
    server.stop()  # the lifespan writes the minute's open count
    url = sqlite_url(server)
    failed = rows(url, action="authenticate", outcome="failed")
    limited = rows(url, action="authenticate", outcome="limited")
    # At most two minutes were touched: 3 rows each, then one count row each.
    assert 3 <= len(failed) <= 6
    assert 1 <= len(limited) <= 2
    counted = sum(r["detail"]["count"] for r in limited)
    assert counted >= 1 and len(failed) + counted <= sent
    for row in limited:
        assert row["client_ip"] == "127.0.0.1" and row["actor_id"] is None
        assert row["target"] == "http"


# -- cluster mode: Postgres, Redis ------------------------------------------------------------


def test_cluster_mode_rows_and_query_on_postgres(
    make_server: Make, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    server = start(make_server, database_url=pg_url, redis_url=redis_url, redis_prefix=redis_prefix)
    published = post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="nw-admin")
    assert "errors" not in published.json(), published.json()
    (row,) = rows(pg_url, action="publishAnnouncement")
    assert (row["actor_id"], row["client_ip"], row["user_agent"]) == ("nw-admin", "127.0.0.1", UA)
    assert row["request_id"] == published.headers["x-request-id"]
    post(server, PUBLISH, {"channel": "institution:northwood"}, as_user="nw-dee")
    post(server, '{ institution(id: "riverside") { id } }', as_user="nw-admin")
    post(server, "{ me { id } }", bearer=forged("rv-admin", "riverside"))

    async def connection() -> None:
        async with connect(server.ws_url) as client:
            assert (await client.init(token("nw-cy")))["type"] == "connection_ack"

    asyncio.run(connection())
    (opened,) = wait_rows(pg_url, action="connect")
    (closed,) = wait_rows(pg_url, action="disconnect")
    assert opened["request_id"] == closed["request_id"]
    (failed,) = rows(pg_url, action="authenticate")
    assert failed["actor_id"] is None and failed["detail"]["claimed"] == "rv-admin"

    listed = page_through(server, "nw-admin", first=2)
    assert {r["institutionId"] for r in listed} == {"northwood"}
    assert [r["action"] for r in listed][-3:] == ["institution", "publish", "publishAnnouncement"]
    assert len(listed) == len(rows(pg_url, institution_id="northwood"))
