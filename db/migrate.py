"""Run Alembic migrations programmatically, from the CLI or from tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from db.engine import ensure_sqlite_dir

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url``; blocking, call it outside an event loop."""
    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


class NotMigrated(RuntimeError):
    """The database schema is behind the code; run ``edumatrix migrate``."""


async def require_current(engine: AsyncEngine) -> None:
    """Refuse to serve on a database whose schema is not at the code's head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config("")).get_heads())

    def current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        found = await connection.run_sync(current)
    if found != heads:
        raise NotMigrated(
            f"database is at revision {sorted(found) or 'none'}, code expects {sorted(heads)}: "
            "run `edumatrix migrate` first"
        )
