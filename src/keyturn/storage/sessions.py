"""Sessions and their refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    Integer,
    String,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from keyturn.ids import new_id
from keyturn.storage.audit import append_events, encode_detail
from keyturn.storage.database import Connection
from keyturn.storage.records import AnyRow, RefreshToken, Session, User
from keyturn.storage.schema import audit_events, refresh_tokens, sessions, users
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


def _no_later_than(end: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """`purge_after` for a session whose end becomes `end`: unchanged unless that is earlier
    (a lower KEYTURN_SESSION_IDLE_TTL), so on PostgreSQL the update stays HOT."""
    purge_after = sessions.c.purge_after
    return case((or_(purge_after.is_(None), purge_after > end), end), else_=purge_after)


_ENDS_AT = bindparam("b_ends_at", type_=sessions.c.ends_at.type)
_TOUCH = (
    update(sessions)
    .where(
        sessions.c.id == bindparam("b_id"),
        sessions.c.revoked_at.is_(None),
        sessions.c.last_seen_at <= bindparam("b_not_since"),
    )
    .values(last_seen_at=bindparam("b_now"), ends_at=_ENDS_AT, purge_after=_no_later_than(_ENDS_AT))
)
_TOKEN_SESSION_AND_USER = (
    select(*_TOKEN_COLUMNS, *_SESSION_COLUMNS, users)
    .join_from(refresh_tokens, sessions, refresh_tokens.c.session_id == sessions.c.id)
    .join(users, sessions.c.user_id == users.c.id)
    .where(refresh_tokens.c.token_hash == bindparam("b_hash"))
)
# A refresh's common case: the token is live, and so are its session and user; the claim
# marks it rotated unless someone already has: the race arbiter (on PostgreSQL a concurrent
# claimer waits on the row lock, then sees `rotated_at` set; on SQLite the write lock
# serializes them). Anything else is left for `find_refresh_token` to tell apart.
_CLAIM = (
    update(refresh_tokens)
    .where(
        refresh_tokens.c.token_hash == bindparam("b_hash"), refresh_tokens.c.rotated_at.is_(None)
    )
    .values(rotated_at=bindparam("b_now"))
)
_ROTATE_COLUMNS = (
    refresh_tokens.c.generation,
    refresh_tokens.c.session_id,
)
# A session and its user that a refresh may rotate a token of.
_LIVE_SESSION_AND_USER = (
    sessions.c.revoked_at.is_(None),
    sessions.c.ends_at > bindparam("b_now"),
    users.c.is_disabled.is_(False),
    users.c.deleted_at.is_(None),
)
# SQLite: claimed only when session and user are live (its planner starts from the token's
# unique index); it returns no joined columns.
_LIVE_CLAIM_SQLITE = _CLAIM.where(
    sessions.c.id == refresh_tokens.c.session_id,
    users.c.id == sessions.c.user_id,
    *_LIVE_SESSION_AND_USER,
).returning(*_ROTATE_COLUMNS)
# PostgreSQL: the whole rotation as one statement, so in autocommit one round trip (BEGIN,
# six statements and COMMIT before).
# - Each step finds its one row by key, from a value the step before returned (a scalar
#   subquery): the planner cannot turn that around. Written as joins, a planner without
#   statistics yet (a new database) started from the users and walked every session (about 200
#   buffers per refresh, and more as dead row versions piled up).
# - The claim looks at the token alone. A token of an ended session is spent this way without
#   an answer; `find_refresh_token` then answers from the session.
# - The claim does not lock the session row: the idle restart does, and it finds the session
#   revoked if a revocation committed meanwhile (PostgreSQL re-checks the row it waited for).
#   The successor, the event and the answer all hang on that restart, so a refresh that loses
#   to a revocation writes and returns nothing.
_CLAIMED = _CLAIM.returning(*_ROTATE_COLUMNS).cte("claimed")
_NEW_END = func.least(sessions.c.expires_at, bindparam("b_idle_ends_at"))
_TOUCHED = (
    update(sessions)
    .where(
        sessions.c.id == select(_CLAIMED.c.session_id).scalar_subquery(),
        users.c.id == sessions.c.user_id,
        *_LIVE_SESSION_AND_USER,
    )
    .values(last_seen_at=bindparam("b_now"), ends_at=_NEW_END, purge_after=_no_later_than(_NEW_END))
    .returning(*_SESSION_COLUMNS, users)
    .cte("touched")
)


def _bind(name: str, like: Any) -> Any:
    return bindparam(name, type_=like.type)


_ROTATE = select(_TOUCHED).add_cte(
    insert(refresh_tokens)
    .from_select(
        ["id", "session_id", "token_hash", "generation", "created_at", "rotated_at"],
        select(
            _bind("b_new_id", refresh_tokens.c.id),
            _TOUCHED.c.s_id,
            _bind("b_new_hash", refresh_tokens.c.token_hash),
            select(_CLAIMED.c.generation).scalar_subquery() + bindparam("b_one", 1, type_=Integer),
            _bind("b_now", refresh_tokens.c.created_at),
            null(),
        ),
    )
    .cte("successor"),
    insert(audit_events)
    .from_select(
        ["id", "type", "occurred_at", "user_id", "session_id", "ip", "user_agent", "detail"],
        select(
            _bind("e_id", audit_events.c.id),
            _bind("e_type", audit_events.c.type),
            _bind("b_now", audit_events.c.occurred_at),
            _TOUCHED.c.s_user_id,
            _TOUCHED.c.s_id,
            _bind("e_ip", audit_events.c.ip),
            _bind("e_user_agent", audit_events.c.user_agent),
            _bind("e_detail", audit_events.c.detail),
        ),
    )
    .cte("logged"),
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
        purge_after=ends_at,
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


async def rotate(
    conn: Connection,
    *,
    token_hash: str,
    successor_hash: str,
    now: datetime,
    idle_ends_at: datetime,
    event: dict[str, Any],
) -> tuple[Session, User] | None:
    """A refresh's common case, whole: mark the live token rotated, store its successor, restart
    the session's idle clock (never past its expiry) and write `event` for the session and its
    user. The session and user as they were; None, with nothing written, when the token, its
    session or its user is not live (`find_refresh_token` then tells why).

    On PostgreSQL this is one statement (run it in autocommit); a concurrent claimer of the same
    token waits on its row lock, then finds it rotated and gets None.
    """
    claim = {"b_hash": token_hash, "b_now": now}
    if conn.dialect.name == "postgresql":
        row = (
            await conn.execute(
                _ROTATE,
                {
                    **claim,
                    "b_new_id": new_id(),
                    "b_new_hash": successor_hash,
                    "b_idle_ends_at": idle_ends_at,
                    "e_id": new_id(),
                    "e_type": event["type"],
                    "e_ip": event["ip"],
                    "e_user_agent": event["user_agent"],
                    "e_detail": encode_detail(event["detail"]),
                },
            )
        ).first()
        if row is None:
            return None
        return _session(row), user_from_row(row, _SESSION_WIDTH)
    won = (await conn.execute(_LIVE_CLAIM_SQLITE, claim)).first()
    if won is None:
        return None
    generation, session_id = won
    found = await get_session_and_user(conn, session_id)
    if found is None:  # the claim joined them: they exist in this transaction
        raise RuntimeError("claimed refresh token without its session")
    session, user = found
    await insert_refresh_token(conn, session_id, successor_hash, generation=generation + 1, now=now)
    await touch_session(
        conn,
        session_id,
        now=now,
        ends_at=min(session.expires_at, idle_ends_at),
        not_since=now + timedelta(seconds=1),  # always: a refresh restarts the idle clock
    )
    await append_events(conn, [{**event, "user_id": user.id, "session_id": session.id}])
    return session, user


@dataclass(frozen=True, slots=True)
class FoundToken:
    """A refresh token looked up by hash, with its session, user and (if any) its successor."""

    token: RefreshToken
    session: Session
    user: User
    successor: RefreshToken | None


async def find_refresh_token(conn: Connection, token_hash: str) -> FoundToken | None:
    """What a refresh that `rotate` turned down needs to tell why: a token already rotated (a
    retry, or reuse), one of an ended session, or of a user who may no longer sign in."""
    row = (await conn.execute(_TOKEN_SESSION_AND_USER, {"b_hash": token_hash})).first()
    if row is None:
        return None
    token = _token(row)
    successor_row = (
        await conn.execute(
            _SUCCESSOR, {"b_session_id": token.session_id, "b_generation": token.generation + 1}
        )
    ).first()
    return FoundToken(
        token,
        _session(row, _TOKEN_WIDTH),
        user_from_row(row, _TOKEN_WIDTH + _SESSION_WIDTH),
        successor=_token(successor_row) if successor_row else None,
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
        .values(revoked_at=now, revoke_reason=reason, ends_at=now, purge_after=now)
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


class Purged(NamedTuple):
    sessions: int  # removed
    tokens: int  # removed
    visited: int  # sessions due: fewer than the batch size means no more are


async def purge_ended(conn: Connection, *, now: datetime, batch_size: int) -> Purged:
    """Delete up to `batch_size` ended sessions and their tokens. A session that is due
    (`purge_after`) but still live, because refreshes moved its end on, is not deleted: its
    end becomes its new `purge_after`."""
    postgres = conn.dialect.name == "postgresql"
    # Sessions the previous release created during a rolling deploy are due at their end.
    await conn.execute(
        update(sessions)
        .where(sessions.c.purge_after.is_(None))
        .values(purge_after=sessions.c.ends_at)
    )
    due = (
        select(sessions.c.id, sessions.c.ends_at)
        .where(sessions.c.purge_after <= now)
        .order_by(sessions.c.purge_after)  # walks the index, never the whole table
        .limit(batch_size)
    )
    if postgres:
        # Another instance's batch skips the rows this one has taken.
        due = due.with_for_update(skip_locked=True)
    rows = (await conn.execute(due)).all()
    ended = [session_id for session_id, ends_at in rows if ends_at <= now]
    live = [session_id for session_id, ends_at in rows if ends_at > now]

    def in_batch(column: ColumnElement[str], ids: list[str]) -> ColumnElement[bool]:
        if postgres:  # one array parameter: no thousand-placeholder statement to render
            return column == any_(bindparam("ids", ids, type_=postgresql.ARRAY(String)))
        return column.in_(ids)

    if live:
        await conn.execute(
            update(sessions)
            .where(in_batch(sessions.c.id, live))
            .values(purge_after=sessions.c.ends_at)
        )
    if not ended:
        return Purged(0, 0, len(rows))
    tokens = await conn.execute(
        delete(refresh_tokens).where(in_batch(refresh_tokens.c.session_id, ended))
    )
    removed = await conn.execute(delete(sessions).where(in_batch(sessions.c.id, ended)))
    return Purged(removed.rowcount, tokens.rowcount, len(rows))


async def count_active_sessions(conn: Connection, *, now: datetime) -> int:
    statement = select(func.count()).where(
        sessions.c.ends_at > now, sessions.c.revoked_at.is_(None)
    )
    return int((await conn.execute(statement)).scalar_one())
