"""One secret for every session's refresh-token rotation, instead of one per session.

A successor token is derived from the presented token with this key, so it is known before
the session is read: on PostgreSQL a refresh is then one statement (storage/sessions.py). Like
a per-session key, it yields nothing without a token, which is stored only as a hash.

Additive, for a rolling deploy: `sessions.rotation_key` stays, and new sessions carry this
secret there, so the previous release derives the same successors.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from keyturn.storage.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    secrets = op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.bulk_insert(
        secrets,
        [{"name": "refresh_rotation", "value": os.urandom(32), "created_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
