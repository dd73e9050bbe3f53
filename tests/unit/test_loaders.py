"""Fields that reference people by id are batched (schema/loaders.py): a page of
announcements with their authors costs a fixed number of queries, not one per row.
Against a real, migrated and seeded SQLite database, through the real schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event

from api.settings import Settings
from db.engine import Sessions, create_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import Announcement
from db.seed import seed_demo
from schema.build import build_schema
from schema.context import Context
from streams.acl import Role, Viewer

MATH_101 = "institution:northwood:classroom:nw-math-101"
AUTHORS = ["nw-ada", "nw-admin", "nw-bell", "ghost"]  # the last: not in the directory
PAGE = """query($c: String!) {
  announcementPage(channel: $c, first: 40) {
    rows { authorId author { displayName role institution { name } } }
  }
}"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'loaders.db'}"
    upgrade(url)  # runs its own event loop: not inside the async fixture below
    return url


@pytest.fixture
async def sessions(url: str) -> AsyncIterator[tuple[Sessions, list[str]]]:
    engine = create_engine(url)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    factory = make_sessionmaker(engine)
    await seed_demo(factory)
    async with factory() as session, session.begin():
        session.add_all(
            Announcement(
                channel=MATH_101,
                institution_id="northwood",
                author_id=AUTHORS[i % len(AUTHORS)],
                title=f"t{i}",
                body="b",
                priority="normal",
            )
            for i in range(32)
        )
    statements.clear()
    try:
        yield factory, statements
    finally:
        await engine.dispose()


def context(sessions: Sessions, user: str, institution: str = "northwood") -> Context:
    viewer = Viewer(user, Role.STUDENT, institution, classrooms=frozenset({"nw-math-101"}))
    services = SimpleNamespace(sessions=sessions)
    return Context(request=None, services=services, viewer=viewer)  # type: ignore[arg-type]


async def test_a_page_of_authors_is_three_queries(
    sessions: tuple[Sessions, list[str]],
) -> None:
    factory, statements = sessions
    schema = build_schema(Settings())
    result = await schema.execute(
        PAGE, variable_values={"c": MATH_101}, context_value=context(factory, "nw-cy")
    )
    assert result.errors is None, result.errors
    assert result.data is not None
    rows = result.data["announcementPage"]["rows"]
    assert len(rows) == 32
    names = {r["authorId"]: r["author"] and r["author"]["displayName"] for r in rows}
    assert names == {
        "nw-ada": "Ada Lovelace",
        "nw-admin": "Nora Admin",
        "nw-bell": "Bell Service",
        "ghost": None,
    }
    assert {r["author"]["institution"]["name"] for r in rows if r["author"]} == {
        "Northwood High School"
    }
    # The page, the authors (one query for all), their institution (and its
    # departments and classrooms, loaded with it).
    assert len(statements) == 5, statements


async def test_users_load_only_within_the_institution_asked(
    sessions: tuple[Sessions, list[str]],
) -> None:
    factory, statements = sessions
    loaders = context(factory, "rv-finn", "riverside").loaders
    keys = [("riverside", "nw-ada"), ("northwood", "nw-ada"), ("northwood", "nw-cy")]
    found = [await f for f in [loaders.users.load(k) for k in keys]]
    assert [u.display_name if u else None for u in found] == [None, "Ada Lovelace", "Cy Student"]
    assert len(statements) == 2  # one per institution asked about, in one batch
