"""Plain records the stores return: no ORM objects leave the storage package."""

from __future__ import annotations

from dataclasses import dataclass, field
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
