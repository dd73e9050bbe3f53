"""audit log: client ip, user agent, request id; append-only triggers

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000

The database, not only the application, keeps ``audit_log`` append-only: on
Postgres one statement-level trigger refuses UPDATE and DELETE and another
TRUNCATE (``BEFORE TRUNCATE ... FOR EACH STATEMENT``), so even a statement that
matches no row fails loudly; on SQLite ``BEFORE UPDATE`` / ``BEFORE DELETE``
triggers ``RAISE(ABORT, ...)`` (SQLite has no TRUNCATE, and its truncate
optimisation of an unqualified DELETE is off for a table with triggers).

Purging old rows is a deliberate operator act outside the application; the
README's audit section gives the exact procedure for each engine.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSED = "audit_log is append-only"

POSTGRES_UP = [
    # 42501 insufficient_privilege: the caller may not do this, whoever they are.
    f"""
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{REFUSED}: % refused', TG_OP
            USING ERRCODE = '42501',
                  HINT = 'purging is an operator procedure, see the README (audit log)';
    END
    $$
    """,
    "CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
]
POSTGRES_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
    "DROP TRIGGER IF EXISTS audit_log_no_update_delete ON audit_log",
    "DROP FUNCTION IF EXISTS audit_log_append_only()",
]
SQLITE_UP = [
    f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSED}: UPDATE refused'); END",
    f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSED}: DELETE refused'); END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_log_no_delete",
    "DROP TRIGGER IF EXISTS audit_log_no_update",
]


def _statements(up: bool) -> list[str]:
    if op.get_context().dialect.name == "postgresql":
        return POSTGRES_UP if up else POSTGRES_DOWN
    return SQLITE_UP if up else SQLITE_DOWN


def upgrade() -> None:
    # Adding nullable columns and indexes never rebuilds the SQLite table, so the
    # triggers created last are the table's for good.
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_ip", sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
        batch_op.drop_index(batch_op.f("ix_audit_log_institution_id"))
        batch_op.create_index("ix_audit_log_institution_id_id", ["institution_id", "id"])
    for statement in _statements(up=True):
        op.execute(statement)


def downgrade() -> None:
    # Triggers first: SQLite's batch mode rebuilds the table to drop columns.
    for statement in _statements(up=False):
        op.execute(statement)
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_institution_id_id")
        batch_op.create_index(
            batch_op.f("ix_audit_log_institution_id"), ["institution_id"], unique=False
        )
        batch_op.drop_column("request_id")
        batch_op.drop_column("user_agent")
        batch_op.drop_column("client_ip")
