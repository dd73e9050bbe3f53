"""apply_batch on SQLite and Postgres: each record once, whatever batches overlap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from db.analytics_models import ConsumerOffset, EventMinute, EventUserMinute
from db.analytics_write import Consumed, Thresholds, apply_batch
from db.engine import create_engine, make_sessionmaker
from db.migrate import upgrade
from streams.events import Event

AT = datetime(2026, 12, 2, 9, 30, 15, tzinfo=UTC)
GROUP = "g"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database (migrations run outside the test's event loop)."""
    if request.param == "sqlite":
        found = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    else:
        found = request.getfixturevalue("pg_url")
    upgrade(found)
    yield found


def record(topic: str, partition: int, offset: int, type_: str = "auth.login") -> Consumed:
    event = Event(type=type_, institution_id="northwood", user_id="nw-ada", occurred_at=AT)
    return Consumed(topic, partition, offset, event)


async def test_overlapping_batches_over_two_partitions_count_each_record_once(url: str) -> None:
    engine = create_engine(url)
    sessions = make_sessionmaker(engine)
    limits = Thresholds(errors_per_minute=1, failed_logins_per_minute=100)
    try:
        first = [record("a", 0, 0), record("a", 0, 1), record("b", 3, 0)]
        applied = await apply_batch(sessions, GROUP, first, thresholds=limits)
        assert (len(applied.events), applied.skipped) == (3, 0)
        # a replay of all of it, new records on both partitions (two errors), and a
        # partition seen for the first time, starting past zero
        second = [*first, record("a", 0, 2), record("b", 3, 1, "error.internal")]
        second += [record("b", 3, 2, "error.internal"), record("c", 1, 5)]
        applied = await apply_batch(
            sessions, GROUP, second, high_watermarks={("b", 3): 10}, thresholds=limits
        )
        assert (len(applied.events), applied.skipped) == (4, 3)
        assert [(a.rule, a.value) for a in applied.alerts] == [("errors_per_minute", 2)]
        again = await apply_batch(sessions, GROUP, second, thresholds=limits)
        assert (len(again.events), again.skipped, again.alerts) == (0, 7, [])

        async with sessions() as session:
            offsets = {
                (r.topic, r.partition): (r.next_offset, r.high_watermark)
                for r in (await session.scalars(select(ConsumerOffset))).all()
            }
            minutes = {
                r.type: (r.count, r.errors)
                for r in (await session.scalars(select(EventMinute))).all()
            }
            users = {
                r.type: r.count for r in (await session.scalars(select(EventUserMinute))).all()
            }
        # the third call applied nothing, so it left the offsets (and watermark) alone
        assert offsets == {("a", 0): (3, None), ("b", 3): (3, 10), ("c", 1): (6, None)}
        assert minutes == {"auth.login": (5, 0), "error.internal": (2, 2)}
        assert users == {"auth.login": 5, "error.internal": 2}
    finally:
        await engine.dispose()
