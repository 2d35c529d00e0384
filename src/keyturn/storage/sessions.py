"""Sessions and their refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, and_, any_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from keyturn.ids import new_id
from keyturn.storage.database import Connection
from keyturn.storage.records import AnyRow, RefreshToken, Session, User
from keyturn.storage.schema import refresh_tokens, sessions, users
from keyturn.storage.users import user_from_row

_SESSION_COLUMNS = [c.label(f"s_{c.name}") for c in sessions.c]
_TOKEN_COLUMNS = [c.label(f"t_{c.name}") for c in refresh_tokens.c]

# The hot paths' statements are built once, with bound parameters: SQLAlchemy then memoizes
# their cache keys, and executing one costs about a quarter of building it anew per call.
_INSERT_SESSION = insert(sessions)
_INSERT_TOKEN = insert(refresh_tokens)
_SESSION_BY_ID = select(sessions).where(sessions.c.id == bindparam("b_id"))
_SESSION_AND_USER = (
    select(*_SESSION_COLUMNS, users)
    .join_from(sessions, users, sessions.c.user_id == users.c.id)
    .where(sessions.c.id == bindparam("b_id"))
)
_TOUCH = (
    update(sessions)
    .where(
        sessions.c.id == bindparam("b_id"),
        sessions.c.revoked_at.is_(None),
        sessions.c.last_seen_at <= bindparam("b_not_since"),
    )
    .values(last_seen_at=bindparam("b_now"), ends_at=bindparam("b_ends_at"))
)
# Mark a refresh token rotated unless someone already has: the race arbiter (see below).
_MARK_ROTATED = (
    update(refresh_tokens)
    .where(
        refresh_tokens.c.token_hash == bindparam("b_hash"), refresh_tokens.c.rotated_at.is_(None)
    )
    .values(rotated_at=bindparam("b_now"))
)
_CLAIM = _MARK_ROTATED.returning(*_TOKEN_COLUMNS)
# PostgreSQL only (SQLite has no UPDATE inside WITH; there a statement costs no round trip):
# the claim and the session and user it needs, in one round trip.
_CLAIMED = _MARK_ROTATED.returning(*refresh_tokens.c).cte("claimed")
_CLAIM_WITH_SESSION_AND_USER = (
    select(
        *[_CLAIMED.c[c.name].label(f"t_{c.name}") for c in refresh_tokens.c],
        *_SESSION_COLUMNS,
        users,
    )
    .join_from(_CLAIMED, sessions, _CLAIMED.c.session_id == sessions.c.id)
    .join(users, sessions.c.user_id == users.c.id)
)
_TOKEN_SESSION_AND_USER = (
    select(*_TOKEN_COLUMNS, *_SESSION_COLUMNS, users)
    .join_from(refresh_tokens, sessions, refresh_tokens.c.session_id == sessions.c.id)
    .join(users, sessions.c.user_id == users.c.id)
    .where(refresh_tokens.c.token_hash == bindparam("b_hash"))
)
_SUCCESSOR = select(refresh_tokens).where(
    refresh_tokens.c.session_id == bindparam("b_session_id"),
    refresh_tokens.c.generation == bindparam("b_generation"),
)


# Records are built by column position (their fields follow the table's columns, a test pins
# it): the joined statements select token, then session, then user columns.
_TOKEN_WIDTH = len(refresh_tokens.c)
_SESSION_WIDTH = len(sessions.c)


def _session(row: AnyRow, start: int = 0) -> Session:
    return Session(*row[start : start + _SESSION_WIDTH])


def _token(row: AnyRow, start: int = 0) -> RefreshToken:
    return RefreshToken(*row[start : start + _TOKEN_WIDTH])


async def insert_session(
    conn: Connection,
    *,
    user_id: str,
    rotation_key: bytes,
    refresh_token_hash: str,
    now: datetime,
    expires_at: datetime,
    ends_at: datetime,
    ip: str | None,
    user_agent: str | None,
) -> Session:
    record = Session(
        id=new_id(),
        user_id=user_id,
        rotation_key=rotation_key,
        created_at=now,
        authenticated_at=now,
        last_seen_at=now,
        expires_at=expires_at,
        ends_at=ends_at,
        revoked_at=None,
        revoke_reason=None,
        ip=ip,
        user_agent=user_agent,
    )
    await conn.execute(_INSERT_SESSION, {c.name: getattr(record, c.name) for c in sessions.c})
    await insert_refresh_token(conn, record.id, refresh_token_hash, generation=0, now=now)
    return record


async def insert_refresh_token(
    conn: Connection, session_id: str, token_hash: str, *, generation: int, now: datetime
) -> None:
    await conn.execute(
        _INSERT_TOKEN,
        {
            "id": new_id(),
            "session_id": session_id,
            "token_hash": token_hash,
            "generation": generation,
            "created_at": now,
            "rotated_at": None,
        },
    )


async def get_session(conn: Connection, session_id: str) -> Session | None:
    row = (await conn.execute(_SESSION_BY_ID, {"b_id": session_id})).first()
    return _session(row) if row else None


async def get_session_and_user(conn: Connection, session_id: str) -> tuple[Session, User] | None:
    """The session behind an access token and its user, in one round trip."""
    row = (await conn.execute(_SESSION_AND_USER, {"b_id": session_id})).first()
    if row is None:
        return None
    return _session(row), user_from_row(row, _SESSION_WIDTH)


async def touch_session(
    conn: Connection, session_id: str, *, now: datetime, ends_at: datetime, not_since: datetime
) -> None:
    """Record activity unless it was recorded after `not_since` (reads must not become writes)."""
    await conn.execute(
        _TOUCH, {"b_id": session_id, "b_now": now, "b_ends_at": ends_at, "b_not_since": not_since}
    )


async def find_session_by_token_hash(conn: Connection, token_hash: str) -> Session | None:
    row = (
        await conn.execute(
            select(sessions)
            .join_from(sessions, refresh_tokens, refresh_tokens.c.session_id == sessions.c.id)
            .where(refresh_tokens.c.token_hash == token_hash)
        )
    ).first()
    return _session(row) if row else None


@dataclass(frozen=True, slots=True)
class ClaimedToken:
    """A refresh token looked up by hash, with its session, user and (if any) its successor."""

    token: RefreshToken
    session: Session
    user: User
    successor: RefreshToken | None
    claimed: bool  # True when this call marked it rotated (the caller won the race)


async def claim_refresh_token(
    conn: Connection, token_hash: str, *, now: datetime
) -> ClaimedToken | None:
    """Mark the token rotated if nobody has; either way return what the caller needs to decide.

    The conditional UPDATE is the race arbiter: on PostgreSQL a concurrent claimer blocks on
    the row lock and then sees `rotated_at` set; on SQLite the write lock serializes them.
    """
    claim = {"b_hash": token_hash, "b_now": now}
    if conn.dialect.name == "postgresql":
        row = (await conn.execute(_CLAIM_WITH_SESSION_AND_USER, claim)).first()
        if row is not None:
            return ClaimedToken(
                _token(row),
                _session(row, _TOKEN_WIDTH),
                user_from_row(row, _TOKEN_WIDTH + _SESSION_WIDTH),
                None,
                claimed=True,
            )
    else:
        won = (await conn.execute(_CLAIM, claim)).first()
        if won is not None:
            token = _token(won)
            found = await get_session_and_user(conn, token.session_id)
            if found is None:
                return None
            return ClaimedToken(token, found[0], found[1], successor=None, claimed=True)
    # Someone claimed it before: what the caller needs to tell a retry from reuse.
    row = (await conn.execute(_TOKEN_SESSION_AND_USER, {"b_hash": token_hash})).first()
    if row is None:
        return None
    token = _token(row)
    successor_row = (
        await conn.execute(
            _SUCCESSOR, {"b_session_id": token.session_id, "b_generation": token.generation + 1}
        )
    ).first()
    return ClaimedToken(
        token,
        _session(row, _TOKEN_WIDTH),
        user_from_row(row, _TOKEN_WIDTH + _SESSION_WIDTH),
        successor=_token(successor_row) if successor_row else None,
        claimed=False,
    )


async def mark_authenticated(conn: Connection, session_id: str, *, now: datetime) -> None:
    await conn.execute(
        update(sessions).where(sessions.c.id == session_id).values(authenticated_at=now)
    )


async def revoke_sessions(
    conn: Connection,
    *,
    user_id: str,
    now: datetime,
    reason: str,
    session_id: str | None = None,
    except_session_id: str | None = None,
) -> list[Session]:
    """Revoke one session (by id, of this user) or all of a user's live ones; return them."""
    # Only live sessions: one that already ended is "unknown" to its owner, as in the list.
    conditions = [
        sessions.c.user_id == user_id,
        sessions.c.revoked_at.is_(None),
        sessions.c.ends_at > now,
    ]
    if session_id is not None:
        conditions.append(sessions.c.id == session_id)
    if except_session_id is not None:
        conditions.append(sessions.c.id != except_session_id)
    result = await conn.execute(
        update(sessions)
        .where(and_(*conditions))
        .values(revoked_at=now, revoke_reason=reason, ends_at=now)
        .returning(sessions)
    )
    return [_session(row) for row in result]


async def list_active_sessions(conn: Connection, user_id: str, *, now: datetime) -> list[Session]:
    result = await conn.execute(
        select(sessions)
        .where(
            sessions.c.user_id == user_id,
            sessions.c.revoked_at.is_(None),
            sessions.c.ends_at > now,
        )
        .order_by(sessions.c.created_at.desc())
    )
    return [_session(row) for row in result]


async def purge_ended(conn: Connection, *, now: datetime, batch_size: int) -> tuple[int, int]:
    """Delete up to `batch_size` ended sessions and their tokens: (sessions, tokens) removed."""
    candidates = (
        select(sessions.c.id)
        .where(sessions.c.ends_at <= now)
        .order_by(sessions.c.ends_at)  # walks the index, never the whole table
        .limit(batch_size)
    )
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        # Another instance's batch skips the rows this one has taken.
        candidates = candidates.with_for_update(skip_locked=True)
    ids = [row[0] for row in await conn.execute(candidates)]
    if not ids:
        return 0, 0

    def in_batch(column: ColumnElement[str]) -> ColumnElement[bool]:
        if postgres:  # one array parameter: no thousand-placeholder statement to render
            return column == any_(bindparam("ids", ids, type_=postgresql.ARRAY(String)))
        return column.in_(ids)

    tokens = await conn.execute(delete(refresh_tokens).where(in_batch(refresh_tokens.c.session_id)))
    removed = await conn.execute(delete(sessions).where(in_batch(sessions.c.id)))
    return removed.rowcount, tokens.rowcount


async def count_active_sessions(conn: Connection, *, now: datetime) -> int:
    statement = select(func.count()).where(
        sessions.c.ends_at > now, sessions.c.revoked_at.is_(None)
    )
    return int((await conn.execute(statement)).scalar_one())
