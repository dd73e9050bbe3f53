"""delivery outbox: messages committed with their rows, relayed to the bus

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 23:10:00.000000

A row is written in the same transaction as the announcement, alert or
notification it announces, and deleted once the message is on the bus. What is
left after a crash or a Redis outage is relayed by every server process
(``api/outbox.py``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_outbox")),
        # Ids are publish keys: SQLite must never hand out a deleted row's id again.
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_delivery_outbox_created_at"), "delivery_outbox", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_delivery_outbox_created_at"), table_name="delivery_outbox")
    op.drop_table("delivery_outbox")
