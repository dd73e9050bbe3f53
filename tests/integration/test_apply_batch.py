"""apply_batch on SQLite and Postgres: each record once, whatever batches overlap."""

from __future__ import annotations

import asyncio
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


async def test_a_lag_alert_seen_by_servers_in_different_minutes_is_recorded_once(
    url: str,
) -> None:
    """consumer_lag's bucket is the minute one server first saw the lag, so two
    servers can hold different buckets for one episode; with a quiet period only
    the first record counts, also when they record at the same moment."""
    from datetime import timedelta

    from db.analytics_write import Alert, record_alert

    engine = create_engine(url)
    sessions = make_sessionmaker(engine)
    quiet = timedelta(minutes=10)
    try:

        def lag(minute: int) -> Alert:
            bucket = AT.replace(second=0) + timedelta(minutes=minute)
            return Alert("platform", "consumer_lag", GROUP, bucket, 500, 100)

        together = await asyncio.gather(
            *(record_alert(sessions, lag(m), {}, quiet_for=quiet) for m in range(4))
        )
        assert sorted(together) == [False, False, False, True]
        assert not await record_alert(sessions, lag(9), {}, quiet_for=quiet)
        # Without a quiet period (the other rules), a new bucket is a new alert.
        assert await record_alert(sessions, lag(9), {})
    finally:
        await engine.dispose()
