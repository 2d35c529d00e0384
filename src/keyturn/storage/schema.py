"""The tables, as SQLAlchemy Core metadata (Alembic migrations create them; this module reads)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


def sqlite_time(text: str) -> datetime:
    """A timestamp as SQLite holds it (naive text in UTC, as `UTCDateTime` writes it): aware,
    in UTC. Naming the offset in the text is a tenth of the cost of `replace(tzinfo=UTC)`."""
    try:
        parsed = datetime.fromisoformat(text + "+00:00")
    except ValueError:  # written with an offset of its own, by hand or by another tool
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    # A date alone takes no offset (Python 3.11 ignores it): midnight, in UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def optional_sqlite_time(value: str | None) -> datetime | None:
    return None if value is None else sqlite_time(value)


def sqlite_text(value: datetime) -> str:
    """An aware timestamp as SQLite holds it: the text SQLite's DATETIME type writes
    ("%Y-%m-%d %H:%M:%S.%f", naive, in UTC), in one C call instead of its %-format of seven
    attributes."""
    if value.tzinfo is not UTC:  # the usual case needs no conversion
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            return None if value is None else sqlite_text(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: Any) -> datetime | None:
            # SQLite hands back the text written above, parsed here without SQLAlchemy's SQLite
            # type parsing it first (the generic hook runs both): a refresh reads ten of them.
            if value.__class__ is str:
                return sqlite_time(value)
            return self.process_result_value(value, dialect)

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return sqlite_time(value)
        if not isinstance(value, datetime):
            raise TypeError(f"not a timestamp: {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ID = String(32)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200)),
    Column("password_hash", String(256), nullable=False),
    Column("email_verified", Boolean, nullable=False, default=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("is_disabled", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # What the previous release derived this session's successor tokens with. Sessions created
    # now carry the shared secret (server_secrets), so that release, still serving during a
    # rolling deploy, derives the same successor; a later release drops the column.
    Column("rotation_key", LargeBinary(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("authenticated_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    # min(expires_at, last_seen_at + idle TTL), or the revocation time: "is it live?".
    Column("ends_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("revoke_reason", String(32)),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
    # When cleanup should look at it: never after `ends_at`, often before (a refresh moves
    # `ends_at` on, not this). Only this is indexed, so the write every refresh makes changes no
    # indexed column: on PostgreSQL a HOT update, with no new index entries and no bloat.
    # Empty for a session the previous release created during a rolling deploy.
    Column("purge_after", UTCDateTime),
    Index("ix_sessions_user_id", "user_id"),
    Index("ix_sessions_purge_after", "purge_after"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", ID, primary_key=True),
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("generation", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("rotated_at", UTCDateTime),
    Index("ix_refresh_tokens_session_generation", "session_id", "generation", unique=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", ID, primary_key=True),
    # Empty until the event is sealed into the chain (storage/audit.py). Its unique index also
    # finds the events still waiting (both databases index NULLs).
    Column("seq", BigInteger, unique=True),
    Column("type", String(64), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("user_id", ID),
    Column("session_id", ID),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    Index("ix_audit_events_user_seq", "user_id", "seq"),
    Index("ix_audit_events_type_seq", "type", "seq"),
)

# One row: the head of the audit hash chain, locked by each sealer (serializes `seq`).
audit_chain = Table(
    "audit_chain",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
    Column("pruned_through_seq", BigInteger, nullable=False),
    Column("pruned_hash", String(64), nullable=False),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", ID, primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_pem", Text, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime),
    # A retired key stays published until every token it signed has expired.
    Column("publish_until", UTCDateTime),
)

# Server-wide secrets every instance loads at start-up (created by the migrations).
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
