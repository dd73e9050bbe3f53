"""AuditTrail (db/audit_trail.py) against a real, migrated SQLite database: floods
folded into per-minute counts with a bounded number of sources, queued rows
stored in batches and all written by close()."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.audit_trail import AuditTrail
from db.engine import create_engine, make_sessionmaker
from db.migrate import upgrade
from db.models import AuditEntry
from db.repo import Actor


class Clock:
    def __init__(self, now: float = 6000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    return url


async def stored(url: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.id))
            return [dict(r._mapping) for r in result]
    finally:
        await engine.dispose()


def failure(ip: str) -> tuple[Actor, str, str, Any, dict[str, Any]]:
    return Actor(ip=ip), "authenticate", "http", "failed", {"reason": "bad"}


async def test_flood_becomes_a_count_row_when_the_minute_ends(url: str) -> None:
    engine = create_engine(url)
    clock = Clock()
    trail = AuditTrail(make_sessionmaker(engine), per_minute=2, clock=clock)
    try:
        written = [await trail.record_or_count(*failure("192.0.2.1")) for _ in range(10)]
        assert written == [True, True] + [False] * 8
        await trail.record_or_count(*failure("192.0.2.2"))  # another address: its own budget
        clock.now += 60  # the next minute: the first one's count is written
        assert await trail.record_or_count(*failure("192.0.2.1"))
        await trail.close()
    finally:
        await engine.dispose()
    rows = await stored(url)
    limited = [r for r in rows if r["outcome"] == "limited"]
    assert len([r for r in rows if r["outcome"] == "failed"]) == 4
    assert [(r["client_ip"], r["detail"]["count"]) for r in limited] == [("192.0.2.1", 8)]
    assert limited[0]["actor_id"] is None and limited[0]["target"] == "http"


async def test_sources_are_bounded(url: str) -> None:
    engine = create_engine(url)
    trail = AuditTrail(make_sessionmaker(engine), per_minute=1, max_sources=3, clock=Clock())
    try:
        for i in range(50):  # 50 addresses, 3 failures each
            for _ in range(3):
                await trail.record_or_count(*failure(f"198.51.100.{i}"))
        await trail.close()
    finally:
        await engine.dispose()
    rows = await stored(url)
    # 3 tracked addresses and one shared "other sources" entry: a row each, then a count.
    assert len(rows) == 4 + 4
    other = [r for r in rows if r["outcome"] == "limited" and r["client_ip"] is None]
    assert other[0]["detail"]["count"] == 47 * 3 - 1  # the 47 untracked, less one row
    assert other[0]["detail"]["otherSources"] is True


async def test_count_is_written_by_the_timer_without_further_traffic(url: str) -> None:
    engine = create_engine(url)
    trail = AuditTrail(make_sessionmaker(engine), per_minute=1, window_seconds=0.3)
    try:
        for _ in range(5):
            await trail.record_or_count(*failure("192.0.2.9"))
        for _ in range(40):  # the window ends within 0.3 s; the timer writes the count
            await asyncio.sleep(0.05)
            if any(r["outcome"] == "limited" for r in await stored(url)):
                break
        limited = [r for r in await stored(url) if r["outcome"] == "limited"]
        assert len(limited) == 1 and limited[0]["detail"]["count"] >= 1
    finally:
        await trail.close()
        await engine.dispose()


async def test_queued_rows_share_transactions_and_close_writes_them(url: str) -> None:
    engine = create_engine(url)
    trail = AuditTrail(make_sessionmaker(engine))
    try:
        for i in range(300):
            trail.record_later(Actor(f"u{i}", "student", "northwood"), "connect", "websocket", "ok")
        assert trail.pending == 300
        await trail.close()
        assert trail.pending == 0
    finally:
        await engine.dispose()
    rows = await stored(url)
    assert [r["actor_id"] for r in rows] == [f"u{i}" for i in range(300)]


async def test_a_bad_row_does_not_lose_its_batch(url: str) -> None:
    engine = create_engine(url)
    trail = AuditTrail(make_sessionmaker(engine))
    try:
        trail.record_later(Actor("a"), "connect", "websocket", "ok")
        trail.record_later(Actor("b"), "connect", "websocket", "ok", {"x": object()})  # not JSON
        trail.record_later(Actor("c"), "connect", "websocket", "ok")
        await trail.close()
    finally:
        await engine.dispose()
    assert [r["actor_id"] for r in await stored(url)] == ["a", "c"]
