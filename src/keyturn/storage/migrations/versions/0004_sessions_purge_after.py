"""Cleanup finds sessions by `purge_after`, not `ends_at`, so the write every refresh makes to
its session (a new `ends_at`) changes no indexed column: on PostgreSQL a HOT update, with no new
index entries, in pages with room left for it (fill factor 90).

Additive for the previous release: `purge_after` is nullable (cleanup fills it in for sessions
that release creates) and only an index goes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyturn.storage.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("purge_after", UTCDateTime))
    op.execute("UPDATE sessions SET purge_after = ends_at")
    op.create_index("ix_sessions_purge_after", "sessions", ["purge_after"])
    op.drop_index("ix_sessions_ends_at", "sessions")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sessions SET (fillfactor = 90)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sessions RESET (fillfactor)")
    op.create_index("ix_sessions_ends_at", "sessions", ["ends_at"])
    op.drop_index("ix_sessions_purge_after", "sessions")
    op.drop_column("sessions", "purge_after")
