"""Audit events are sealed into the chain after they commit: `seq`, `prev_hash` and `hash` stay
empty until then, and a partial index finds the events still waiting.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_UNSEALED = sa.text("seq IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger, nullable=True)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=True)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=True)
    op.create_index(
        "ix_audit_events_unsealed",
        "audit_events",
        ["occurred_at", "id"],
        postgresql_where=_UNSEALED,
        sqlite_where=_UNSEALED,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_unsealed", "audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger, nullable=False)
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
