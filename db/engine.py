"""The async engine and session factory; built by the lifespan, never at import."""

from __future__ import annotations

import contextlib
import os
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
    """SQLite creates the file but not its directory; a fresh checkout has neither.

    The file holds every announcement, notification and audit row, so it is
    created here, readable by its owner only, before SQLite opens it: SQLite would
    create it with 0644 (under the usual umask), and it gives the ``-wal`` and
    ``-shm`` files the database file's permissions. A file an older version left
    readable to others is tightened too.
    """
    if url.startswith("sqlite") and ":///" in url:
        db_file = url.split(":///", 1)[1].split("?", 1)[0]
        if db_file and db_file != ":memory:" and not db_file.startswith("file:"):
            path = Path(db_file)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if file.exists() and file.stat().st_mode & 0o077:
                    file.chmod(0o600)


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
