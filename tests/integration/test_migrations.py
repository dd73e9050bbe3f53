"""Migrations run on both engines, and the server refuses an unmigrated database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

import db.alert_models  # noqa: F401  (alerts and notifications)
import db.analytics_models  # noqa: F401  (registers the analytics tables on Base)
from db.migrate import downgrade, upgrade
from db.models import Base
from tests.server import ServerProcess

EXPECTED = set(Base.metadata.tables) | {"alembic_version"}


async def tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def check_up_down_up(url: str) -> None:
    upgrade(url)
    assert asyncio.run(tables(url)) == EXPECTED
    downgrade(url)
    assert asyncio.run(tables(url)) == {"alembic_version"}
    upgrade(url)
    assert asyncio.run(tables(url)) == EXPECTED


def test_migrations_on_empty_postgres(pg_url: str) -> None:
    check_up_down_up(pg_url)


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    check_up_down_up(f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'x.db'}")


def test_serve_refuses_unmigrated_database(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    with pytest.raises(RuntimeError, match="run `edumatrix migrate` first"):
        server.start(timeout=20)
