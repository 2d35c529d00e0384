"""Request and response bodies (pydantic); field limits here keep junk away from the services."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from keyturn.storage.records import AuditEvent, Session, User


def _no_control_characters(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=200),
    AfterValidator(_no_control_characters),
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(_no_nul)]
Email = Annotated[EmailStr, StringConstraints(max_length=320)]


class Strict(BaseModel):
    # Unknown fields are ignored, so `is_admin` and friends can never be mass-assigned.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class RegisterRequest(Strict):
    email: Email
    password: Password
    name: Name | None = None


class LoginRequest(Strict):
    email: Email
    password: Password


class RefreshRequest(Strict):
    refresh_token: Token


class RevokeRequest(Strict):
    token: Token
    token_type_hint: str | None = None


class PasswordRequest(Strict):
    password: Password


class PasswordChangeRequest(Strict):
    current_password: Password
    new_password: Password


class EmailChangeRequest(Strict):
    new_email: Email


class ProfileUpdate(Strict):
    name: Name | None = Field(...)


class UserOut(BaseModel):
    id: str
    email: str
    name: str | None
    email_verified: bool
    is_admin: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            email_verified=user.email_verified,
            is_admin=user.is_admin,
            created_at=user.created_at,
        )


class TokenResponse(BaseModel):
    """`access_token` and `refresh_token` are null in cookie mode (they are in HttpOnly cookies)."""

    access_token: str | None
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str | None
    session_id: str
    user: UserOut


class UserJson:
    """`UserOut` as JSON, built once per version of each user by each router that keeps one
    (GET /me's, and the refresh answer's). A record equal to the one it was built from (the
    same row, read again) reuses the bytes; any change to the user is a different record."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._built: dict[str, tuple[User, bytes]] = {}

    def __call__(self, user: User) -> bytes:
        known = self._built.get(user.id)
        if known is None or (known[0] is not user and known[0] != user):
            if len(self._built) >= self._limit:
                self._built.clear()
            known = self._built[user.id] = (user, UserOut.of(user).model_dump_json().encode())
        return known[1]


_TOKEN_JSON = (
    b'{"access_token":%s,"token_type":"Bearer","expires_in":%d,"refresh_token":%s,'
    b'"session_id":%s,"user":%s}'
)


def token_json(
    *, access_token: str, expires_in: int, refresh_token: str, session_id: str, user_json: bytes
) -> bytes:
    """`TokenResponse(...).model_dump_json()` with both tokens in the body, assembled: the same
    bytes (a test holds them equal) at a tenth of the cost."""
    return _TOKEN_JSON % (
        orjson.dumps(access_token),
        expires_in,
        orjson.dumps(refresh_token),
        orjson.dumps(session_id),
        user_json,
    )


class SessionOut(BaseModel):
    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool

    @classmethod
    def of(cls, session: Session, current_id: str | None) -> SessionOut:
        return cls(
            id=session.id,
            created_at=session.created_at,
            last_seen_at=session.last_seen_at,
            expires_at=session.ends_at,
            ip=session.ip,
            user_agent=session.user_agent,
            current=session.id == current_id,
        )


class SessionsOut(BaseModel):
    sessions: list[SessionOut]


class AuditEventOut(BaseModel):
    id: str
    type: str
    occurred_at: datetime
    user_id: str | None
    session_id: str | None
    ip: str | None
    user_agent: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        return cls(
            id=event.id,
            type=event.type,
            occurred_at=event.occurred_at,
            user_id=event.user_id,
            session_id=event.session_id,
            ip=event.ip,
            user_agent=event.user_agent,
            detail=event.detail,
        )


class EventsOut(BaseModel):
    events: list[AuditEventOut]
    next_cursor: str | None


class UsersOut(BaseModel):
    users: list[UserOut]
    next_cursor: str | None


class Problem(BaseModel):
    """RFC 9457 problem details, as keyturn sends them."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None


class OAuthTokenResponse(BaseModel):
    """RFC 6749 section 5.1."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str
    session_id: str


class Status(BaseModel):
    status: str
