"""Group commit of announcements, against real SQLite and real Postgres."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.engine import create_engine
from db.group_commit import AnnouncementWriter, NewAnnouncement
from db.migrate import upgrade
from db.models import Announcement, AuditEntry
from db.repo import Actor

SQLITE_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
ACTOR = Actor("nw-ada", "teacher", "northwood")


def new(i: int, **overrides: Any) -> NewAnnouncement:
    fields: dict[str, Any] = {
        "actor": ACTOR,
        "channel": "institution:northwood:classroom:nw-math-101",
        "institution_id": "northwood",
        "title": f"title {i}",
        "body": f"body {i}",
        "priority": "NORMAL",
    }
    fields.update(overrides)
    return NewAnnouncement(**fields)


async def check_concurrent_publishes_share_transactions(url: str) -> None:
    engine = create_engine(url)
    writer = AnnouncementWriter(engine)
    try:
        stored = await asyncio.gather(*(writer.create(new(i)) for i in range(200)))
        # Every caller got its own row back, in the order it asked.
        assert [s.title for s in stored] == [f"title {i}" for i in range(200)]
        assert len({s.id for s in stored}) == 200
        # All 200 were queued within one loop turn: they share a handful of transactions.
        assert writer.rows == 200 and writer.batches < 10
        async with engine.connect() as conn:
            read = {r.id: r for r in await conn.execute(select(Announcement))}
            audit = (await conn.execute(select(AuditEntry))).all()
            raw_times = (await conn.exec_driver_sql("SELECT created_at FROM announcements")).all()
        rows = {i: r.title for i, r in read.items()}
        assert rows == {s.id: s.title for s in stored}
        # Every column of every row of a batch is stored as a single insert stores it.
        for s in stored:
            r = read[s.id]
            assert (r.channel, r.institution_id, r.author_id, r.body, r.priority) == (
                s.channel,
                s.institution_id,
                s.author_id,
                s.body,
                s.priority,
            )
            assert r.created_at.replace(tzinfo=None) == s.created_at.replace(tzinfo=None)
        if engine.dialect.name == "sqlite":  # SQLAlchemy's DateTime text, no offset, no "T"
            assert all(SQLITE_DATETIME.fullmatch(t) for (t,) in raw_times), raw_times[:3]
        assert sorted(a.detail["announcementId"] for a in audit) == sorted(rows)
        assert {(a.actor_id, a.action, a.outcome) for a in audit} == {
            ("nw-ada", "publishAnnouncement", "ok")
        }
    finally:
        await writer.close()
        await engine.dispose()


async def check_bad_row_fails_alone(url: str) -> None:
    engine = create_engine(url)
    writer = AnnouncementWriter(engine)
    try:
        calls = [writer.create(new(i)) for i in range(5)]
        calls.insert(3, writer.create(new(99, channel=None)))  # NOT NULL violation
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[3], IntegrityError)
        good = [r for i, r in enumerate(results) if i != 3]
        assert all(not isinstance(r, BaseException) for r in good)
        async with engine.connect() as conn:
            titles = set((await conn.scalars(select(Announcement.title))).all())
            audited = len((await conn.execute(select(AuditEntry))).all())
        assert titles == {f"title {i}" for i in range(5)}
        assert audited == 5  # the failed row left no audit row behind
    finally:
        await writer.close()
        await engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/gc.db"
    upgrade(url)
    return url


@pytest.fixture
def migrated_pg(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


def test_group_commit_sqlite(sqlite_url: str) -> None:
    asyncio.run(check_concurrent_publishes_share_transactions(sqlite_url))


def test_group_commit_postgres(migrated_pg: str) -> None:
    asyncio.run(check_concurrent_publishes_share_transactions(migrated_pg))


def test_bad_row_fails_alone_sqlite(sqlite_url: str) -> None:
    asyncio.run(check_bad_row_fails_alone(sqlite_url))


def test_bad_row_fails_alone_postgres(migrated_pg: str) -> None:
    asyncio.run(check_bad_row_fails_alone(migrated_pg))


# A trigger that refuses the audit row of one target, per dialect (23514 is a check
# violation: an IntegrityError, as SQLite's ABORT is).
BOOM_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER audit_boom BEFORE INSERT ON audit_log "
        "WHEN NEW.target = 'BOOM' BEGIN SELECT RAISE(ABORT, 'boom'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION audit_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.target = 'BOOM' THEN RAISE EXCEPTION 'boom' USING ERRCODE = '23514'; "
        "END IF; RETURN NEW; END $$",
        "CREATE TRIGGER audit_boom BEFORE INSERT ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_boom()",
    ],
}


async def check_failed_audit_rolls_back_its_announcement(url: str) -> None:
    """A batch that fails after its announcements are inserted leaves none behind.

    The audit insert is the second statement of a batch; a trigger makes it fail for
    one row, so the batch's first statement has already inserted every announcement
    when the error comes. The batch must roll back as a whole and the retry store
    the good rows once each and the bad one not at all.
    """
    engine = create_engine(url)
    writer = AnnouncementWriter(engine)
    boom = "institution:northwood:classroom:boom"
    try:
        async with engine.begin() as conn:
            for statement in BOOM_TRIGGER[engine.dialect.name]:
                await conn.exec_driver_sql(statement.replace("BOOM", boom))
        calls = [writer.create(new(i)) for i in range(4)]
        calls.insert(2, writer.create(new(99, channel=boom)))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[2], IntegrityError), results[2]
        assert "boom" in str(results[2])
        assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
        async with engine.connect() as conn:
            titles = sorted((await conn.scalars(select(Announcement.title))).all())
            audited = len((await conn.execute(select(AuditEntry))).all())
        assert titles == [f"title {i}" for i in range(4)]
        assert audited == 4
    finally:
        await writer.close()
        await engine.dispose()


def test_failed_audit_rolls_back_its_announcement_sqlite(sqlite_url: str) -> None:
    asyncio.run(check_failed_audit_rolls_back_its_announcement(sqlite_url))


def test_failed_audit_rolls_back_its_announcement_postgres(migrated_pg: str) -> None:
    asyncio.run(check_failed_audit_rolls_back_its_announcement(migrated_pg))


async def check_dead_held_connection_costs_a_retry(url: str) -> None:
    """Under load the Postgres writer keeps its connection between batches, so the
    pool's pre-ping no longer checks it; a batch that finds it dead is tried again
    on a fresh connection instead of failing."""
    engine = create_engine(url)
    writer = AnnouncementWriter(engine)
    try:
        await writer.create(new(0))
        # What a busy writer holds, then cut under it as a restart would cut it.
        held = await engine.connect()
        pid = (await held.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        await held.rollback()
        writer._held = held
        async with engine.connect() as admin:
            await admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        stored = await writer.create(new(1))  # a batch of one: no row-by-row fallback
        assert stored.title == "title 1"
        assert writer._held is None or writer._held is not held
        async with engine.connect() as conn:
            titles = sorted((await conn.scalars(select(Announcement.title))).all())
        assert titles == ["title 0", "title 1"]
    finally:
        await writer.close()
        await engine.dispose()


def test_dead_held_connection_costs_a_retry_postgres(migrated_pg: str) -> None:
    asyncio.run(check_dead_held_connection_costs_a_retry(migrated_pg))
