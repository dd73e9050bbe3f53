"""The async engine and session factory; built by the lifespan, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from db.models import Base

Sessions = async_sessionmaker[AsyncSession]

__all__ = ["Base", "Sessions", "create_engine", "make_sessionmaker"]


def ensure_sqlite_dir(url: str) -> None:
    """SQLite creates the file but not its directory; a fresh checkout has neither."""
    if url.startswith("sqlite"):
        db_file = url.split(":///", 1)[-1]
        if db_file and db_file != ":memory:":
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        ensure_sqlite_dir(url)
        # One connection: SQLite has one writer at a time, and several pooled
        # connections contend for its lock through the busy handler, which sleeps
        # (measured here: ~100 publishes/s and "database is locked" under load).
        # Queueing in the pool instead keeps every transaction short and in order.
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0, pool_timeout=60
        )
        # SQLite ignores foreign keys unless asked; WAL lets readers run during writes.
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # In WAL mode NORMAL loses no committed transaction on an application crash,
    # only (at worst) the last ones on a power loss; it skips an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
