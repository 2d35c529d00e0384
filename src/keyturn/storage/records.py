"""Plain records the stores return: no ORM objects leave the storage package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import Row

AnyRow: TypeAlias = "Row[*tuple[Any, ...]]"


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    name: str | None
    password_hash: str
    email_verified: bool
    is_admin: bool
    is_disabled: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    user_id: str
    # Unused since revision 0003 but for a retry after the previous release (see schema.sessions);
    # for the sessions this release creates, the shared secret: kept out of any repr.
    rotation_key: bytes = field(repr=False)
    created_at: datetime
    authenticated_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ends_at: datetime
    revoked_at: datetime | None
    revoke_reason: str | None
    ip: str | None
    user_agent: str | None
    purge_after: datetime | None

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.ends_at > now


_SESSION_FIELDS = len(fields(Session))  # the sessions table's columns, in order


@dataclass(frozen=True, slots=True)
class RefreshToken:
    id: str
    session_id: str
    token_hash: str
    generation: int
    created_at: datetime
    rotated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: str
    seq: int
    type: str
    occurred_at: datetime
    user_id: str | None
    session_id: str | None
    ip: str | None
    user_agent: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private_pem: str
    public_jwk: dict[str, str]
    created_at: datetime
    retired_at: datetime | None
    publish_until: datetime | None


def session_and_user(row: Any, time: Callable[[Any], Any]) -> tuple[Session, User]:
    """A session and its user from one raw row of the session's columns and then the user's,
    in table order (a test pins the fields to it), as a driver returns them: `time` turns
    the driver's timestamps into aware datetimes. On the hot paths, without SQLAlchemy's rows.
    """
    s = row[:_SESSION_FIELDS]
    u = row[_SESSION_FIELDS:]
    session = Session(
        id=s[0],
        user_id=s[1],
        rotation_key=bytes(s[2]),
        created_at=time(s[3]),
        authenticated_at=time(s[4]),
        last_seen_at=time(s[5]),
        expires_at=time(s[6]),
        ends_at=time(s[7]),
        revoked_at=time(s[8]),
        revoke_reason=s[9],
        ip=s[10],
        user_agent=s[11],
        purge_after=time(s[12]),
    )
    user = User(
        id=u[0],
        email=u[1],
        name=u[2],
        password_hash=u[3],
        email_verified=bool(u[4]),
        is_admin=bool(u[5]),
        is_disabled=bool(u[6]),
        created_at=time(u[7]),
        updated_at=time(u[8]),
        deleted_at=time(u[9]),
    )
    return session, user
