"""``Query.alertPage`` costs a fixed number of queries, whatever the page size: the
page, and the roll-calls of every alert on it in one more, only when selected.
Against a real, migrated and seeded SQLite database, through the real schema."""

from __future__ import annotations

from types import SimpleNamespace

from api.settings import Settings
from db import alert_repo
from db.engine import Sessions
from db.repo import Actor
from schema.build import build_schema
from schema.context import Context
from streams.acl import Role, Viewer
from streams.channels import parse_channel
from streams.presence_memory import MemoryPresence
from tests.unit.test_loaders import sessions, url  # noqa: F401  (fixtures)

MATH_101 = "institution:northwood:classroom:nw-math-101"
WITH_ROLL_CALL = """query($first: Int!) { alertPage(first: $first) {
  rows { id title rollCall { targetedCount pendingCount pending { userId online } } }
  nextCursor } }"""
WITHOUT = "query($first: Int!) { alertPage(first: $first) { rows { id title } nextCursor } }"


async def raise_alerts(factory: Sessions, count: int) -> None:
    admin = Actor("nw-admin", "admin", "northwood")
    for i in range(count):
        await alert_repo.create_alert(
            factory,
            actor=admin,
            institution="northwood",
            severity="info",
            title=f"a{i}",
            body="b",
            targets=[parse_channel(MATH_101)] if i % 2 else [],
        )


def context(factory: Sessions) -> Context:
    viewer = Viewer("nw-admin", Role.ADMIN, "northwood")
    services = SimpleNamespace(sessions=factory, presence=MemoryPresence(queue_size=10))
    return Context(request=None, services=services, viewer=viewer)  # type: ignore[arg-type]


async def test_a_page_of_roll_calls_is_two_queries(
    sessions: tuple[Sessions, list[str]],  # noqa: F811
) -> None:
    factory, statements = sessions
    await raise_alerts(factory, 12)
    schema = build_schema(Settings())
    for first, query, expected in [
        (3, WITH_ROLL_CALL, 2),
        (12, WITH_ROLL_CALL, 2),
        (12, WITHOUT, 1),
    ]:
        statements.clear()
        result = await schema.execute(
            query, variable_values={"first": first}, context_value=context(factory)
        )
        assert result.errors is None, result.errors
        assert result.data is not None
        rows = result.data["alertPage"]["rows"]
        assert len(rows) == first
        if query is WITH_ROLL_CALL:
            # Institution-wide (5 people, services are not) and the classroom (2).
            assert [r["rollCall"]["targetedCount"] for r in rows[:2]] == [2, 5]
        assert len(statements) == expected, (first, statements)
