"""Sessions and their refresh tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

import orjson
from sqlalchemy import (
    String,
    Table,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from keyturn.ids import new_id
from keyturn.storage.audit import append_events, encode_detail
from keyturn.storage.database import Connection, Database
from keyturn.storage.driver import SqliteConnection
from keyturn.storage.records import AnyRow, RefreshToken, Session, User, session_and_user
from keyturn.storage.schema import (
    optional_sqlite_time,
    refresh_tokens,
    sessions,
    sqlite_text,
    users,
)
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


def new_session(
    *,
    user_id: str,
    rotation_key: bytes,
    now: datetime,
    expires_at: datetime,
    ends_at: datetime,
    ip: str | None,
    user_agent: str | None,
) -> Session:
    """A session as it is stored when it opens (its id is known before it is written)."""
    return Session(
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


async def insert_session(conn: Connection, record: Session, refresh_token_hash: str) -> None:
    """`record` and its first refresh token, inside the caller's transaction."""
    await conn.execute(_INSERT_SESSION, {c.name: getattr(record, c.name) for c in sessions.c})
    await insert_refresh_token(
        conn, record.id, refresh_token_hash, generation=0, now=record.created_at
    )


# PostgreSQL: a session, its first refresh token and the event that opened it as one statement
# in autocommit: one round trip where a transaction takes five (BEGIN, three inserts, COMMIT),
# each a wake-up of the event loop and of a backend on the cores that hash passwords. The
# token's foreign key is checked at the end of the statement, after the session's insert.
# Every row's key is new and made here, so a statement repeated after its commit's answer was
# lost (`Database.fetch_sql`) finds its rows there and writes nothing more.
_AT = {c.name: f"${position}" for position, c in enumerate(sessions.c, start=1)}
_MORE = [f"${position}" for position in range(len(_AT) + 1, len(_AT) + 9)]
_OPEN_LOGGED_SESSION = f"""
WITH opened AS (
  INSERT INTO sessions ({", ".join(_AT)}) VALUES ({", ".join(_AT.values())})
  ON CONFLICT (id) DO NOTHING
),
first_token AS (
  INSERT INTO refresh_tokens (id, session_id, token_hash, generation, created_at, rotated_at)
  VALUES ({_MORE[0]}, {_AT["id"]}, {_MORE[1]}, 0, {_AT["created_at"]}, NULL)
  ON CONFLICT (id) DO NOTHING
)
INSERT INTO audit_events (id, seq, type, occurred_at, user_id, session_id, ip, user_agent, detail,
                          prev_hash, hash)
VALUES ({_MORE[2]}, NULL, {_MORE[3]}, {_MORE[4]}, {_AT["user_id"]}, {_AT["id"]}, {_MORE[5]},
        {_MORE[6]}, {_MORE[7]}, NULL, NULL)
ON CONFLICT (id) DO NOTHING
"""  # noqa: S608


async def open_logged_session(
    database: Database, record: Session, refresh_token_hash: str, event: dict[str, Any]
) -> None:
    """`record`, its first refresh token and `event` (written for this session and its user),
    committed together in a transaction of their own: on PostgreSQL one statement."""
    event = {**event, "user_id": record.user_id, "session_id": record.id}
    if database.postgres is None:
        async with database.write() as conn:
            await insert_session(conn, record, refresh_token_hash)
            await append_events(conn, [event])
        return
    await database.fetch_sql(
        _OPEN_LOGGED_SESSION,
        *(getattr(record, c.name) for c in sessions.c),
        new_id(),
        refresh_token_hash,
        new_id(),
        event["type"],
        event["occurred_at"],
        event["ip"],
        event["user_agent"],
        encode_detail(event["detail"]),
    )


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


class Rotation(NamedTuple):
    """One refresh's rotation: the token presented, its successor, and the event to write."""

    token_hash: str
    successor_hash: str
    now: datetime
    idle_ends_at: datetime  # the session's end after this refresh, unless its expiry is sooner
    event: dict[str, Any]  # see services.audit.event; the session and user are filled in


def _as(alias: str, table: Table, prefix: str) -> str:
    return ", ".join(f"{alias}.{c.name} AS {prefix}{c.name}" for c in table.c)


def _from(alias: str, table: Table, prefix: str = "") -> str:
    return ", ".join(f"{alias}.{prefix}{c.name}" for c in table.c)


# PostgreSQL: the rotations of one turn of the event loop (storage/batching.py) as one
# statement in autocommit, one round trip and one commit for all of them. Built from the
# schema only, never from input: every value is an array parameter, one element per refresh.
# - Each step reads the step before it and finds its rows by key: the claim by the token's
#   unique index, the session by its primary key, the user (a correlated subquery, which the
#   planner cannot turn into a join that starts from the users) by its primary key.
# - The claim does not lock the session row: the idle restart does, and it finds the session
#   revoked if a revocation committed meanwhile (PostgreSQL re-checks the row it waited for).
#   The successor, the event and the answer hang on that restart, so a refresh that loses to
#   a revocation writes and returns nothing (`find_refresh_token` then answers).
# - A token of an ended session is spent by the claim without an answer; `find_refresh_token`
#   answers from the session, before any reuse check.
# - The connections that run it plan without sequential scans (storage/postgres.py).
_ROTATE_MANY = f"""
WITH input AS (
  SELECT * FROM unnest($1::varchar[], $2::timestamptz[], $3::timestamptz[], $4::varchar[],
                       $5::varchar[], $6::varchar[], $7::varchar[], $8::varchar[],
                       $9::varchar[], $10::text[])
    AS i(hash, now, idle_end, new_id, new_hash, e_id, e_type, ip, user_agent, detail)
),
claimed AS (
  UPDATE refresh_tokens AS t SET rotated_at = i.now FROM input AS i
  WHERE t.token_hash = i.hash AND t.rotated_at IS NULL
  RETURNING t.generation, t.session_id, i.*
),
touched AS (
  UPDATE sessions AS s SET last_seen_at = c.now, ends_at = least(s.expires_at, c.idle_end),
    purge_after = least(s.purge_after, s.expires_at, c.idle_end)
  FROM claimed AS c
  WHERE s.id = c.session_id AND s.revoked_at IS NULL AND s.ends_at > c.now
    AND (SELECT u.is_disabled IS false AND u.deleted_at IS NULL FROM users AS u
         WHERE u.id = s.user_id)
  RETURNING c.*, {_as("s", sessions, "s_")}
),
successor AS (
  INSERT INTO refresh_tokens (id, session_id, token_hash, generation, created_at, rotated_at)
  SELECT t.new_id, t.s_id, t.new_hash, t.generation + 1, t.now, NULL FROM touched AS t
),
logged AS (
  INSERT INTO audit_events (id, type, occurred_at, user_id, session_id, ip, user_agent, detail)
  SELECT t.e_id, t.e_type, t.now, t.s_user_id, t.s_id, t.ip, t.user_agent, t.detail
  FROM touched AS t
)
SELECT t.hash, {_from("t", sessions, "s_")}, {_from("u", users)}
FROM touched AS t JOIN users AS u ON u.id = t.s_user_id
"""  # noqa: S608


# SQLite: a rotation is one row inserted into a view whose trigger does the work, so the
# rotations of a batch are one statement (`_ROTATE_ALL`), stepped inside SQLite: statements run
# one row at a time from Python cost the event loop several times what SQLite spends on them.
# The view and trigger are TEMP, the writer connection's own: nothing in the database file, and
# every release defines its own. The write lock serializes writers, so each row's steps see every
# earlier one (the claim's `changes()` is that row's).
# - The claim: the token is live, and so are its session and user.
# - The successor and the idle restart hang on the claim; a token that is not live is left as
#   it is, for `find_refresh_token` to tell why.
# - The events follow, for the rotations that happened (`append_events` chains them at once).
_ROTATION_COLUMNS = ("hash", "now", "idle_end", "new_id", "new_hash")
_ROTATION_TRIGGER = (
    f"CREATE TEMP VIEW keyturn_rotation ({', '.join(_ROTATION_COLUMNS)})"
    f" AS SELECT {', '.join('NULL' for _ in _ROTATION_COLUMNS)}",
    """CREATE TEMP TRIGGER keyturn_rotate INSTEAD OF INSERT ON keyturn_rotation
BEGIN
  UPDATE refresh_tokens SET rotated_at = NEW.now
  WHERE token_hash = NEW.hash AND rotated_at IS NULL
    AND (SELECT s.revoked_at IS NULL AND s.ends_at > NEW.now
                AND u.is_disabled = 0 AND u.deleted_at IS NULL
         FROM sessions AS s JOIN users AS u ON u.id = s.user_id
         WHERE s.id = refresh_tokens.session_id);
  INSERT INTO refresh_tokens (id, session_id, token_hash, generation, created_at, rotated_at)
  SELECT NEW.new_id, t.session_id, NEW.new_hash, t.generation + 1, NEW.now, NULL
  FROM refresh_tokens AS t WHERE t.token_hash = NEW.hash AND changes() = 1;
  UPDATE sessions SET last_seen_at = NEW.now, ends_at = min(expires_at, NEW.idle_end),
    purge_after = CASE WHEN purge_after IS NULL OR purge_after > min(expires_at, NEW.idle_end)
                       THEN min(expires_at, NEW.idle_end) ELSE purge_after END
  WHERE id = (SELECT session_id FROM refresh_tokens WHERE id = NEW.new_id);
END""",
)
# A batch of rotations is one statement, one step inside SQLite: rows of the view from a
# JSON array, no parameters bound per row.
_ROTATE_ALL = (
    f"INSERT INTO temp.keyturn_rotation ({', '.join(_ROTATION_COLUMNS)}) SELECT "  # noqa: S608
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_ROTATION_COLUMNS)))
    + " FROM json_each(?)"
)
# Where `_ROTATED`'s rows hold the session's id and its user's (after the successor's id).
_SESSION_ID, _USER_ID = (1 + [c.name for c in sessions.c].index(n) for n in ("id", "user_id"))
# What the rotations left: each successor stored, by its new id, with its session and user (its
# hash may have been stored before: a token presented again has the same successor). Raw rows:
# SQLAlchemy's row building cost more than the query.
_ROTATED = (
    f"SELECT t.id, {_from('s', sessions)}, {_from('u', users)} FROM refresh_tokens AS t"  # noqa: S608
    " JOIN sessions AS s ON s.id = t.session_id JOIN users AS u ON u.id = s.user_id"
    " WHERE t.id IN (SELECT value FROM json_each(?))"
)


Rotated = dict[str, tuple[Session, User]]  # by the presented token's hash


async def _rotate_in_sqlite(
    database: Database, rotations: list[Rotation], prepare: Callable[[Rotated], object] | None
) -> Rotated:
    rows, by_successor = [], {}
    for rotation in rotations:
        successor_id = new_id()
        by_successor[successor_id] = rotation
        rows.append(
            (
                rotation.token_hash,
                sqlite_text(rotation.now),
                sqlite_text(rotation.idle_ends_at),
                successor_id,
                rotation.successor_hash,
            )
        )
    payload = orjson.dumps(rows).decode()  # text: SQLite 3.45+ reads a BLOB as JSONB
    found: list[Any] = []
    rotated: Rotated = {}

    def answer() -> None:
        # While the commit is flushed: the rows are read, what is left is parsing them.
        for row in found:
            token_hash = by_successor[row[0]].token_hash
            rotated[token_hash] = session_and_user(row[1:], optional_sqlite_time)
        if prepare is not None:
            prepare(rotated)

    async with database.write(while_flushing=answer) as conn:
        sqlite = cast(SqliteConnection, conn)
        try:
            await sqlite.fetch_sql(_ROTATE_ALL, payload)
        except OperationalError as error:
            if "no such table" not in str(error.orig):
                raise
            # The writer connection's first rotation (the statement failed whole, unprepared).
            for statement in _ROTATION_TRIGGER:
                await conn.exec_driver_sql(statement)
            await sqlite.fetch_sql(_ROTATE_ALL, payload)
        found = await sqlite.fetch_sql(_ROTATED, orjson.dumps(list(by_successor)).decode())
        events = [
            {**by_successor[row[0]].event, "user_id": row[_USER_ID], "session_id": row[_SESSION_ID]}
            for row in found
        ]
        await append_events(conn, events)
    return rotated


async def rotate_many(
    database: Database,
    rotations: list[Rotation],
    prepare: Callable[[Rotated], object] | None = None,
) -> Rotated:
    """A refresh's common case, for many tokens at once, each one alone: mark the live token
    rotated, store its successor, restart the session's idle clock (never past its expiry) and
    write the event for the session and its user. The session (as it is after) and user of
    each rotated token, by the token's hash; a token missing from the answer was not live (its
    session or user neither), and nothing was written for it (`find_refresh_token` then tells
    why). Safe to repeat: a repeat finds every token already rotated.

    `prepare` gets that answer before the call returns: on SQLite while the commit is flushed
    (see `Database.write`: an error it raises reaches the caller after the commit).

    On PostgreSQL rows are locked in the order of the tokens' hashes, so two batches that share
    tokens (the same token presented to two instances) wait for each other instead of
    deadlocking."""
    if database.postgres is None:
        return await _rotate_in_sqlite(database, rotations, prepare)
    rotations = sorted(rotations, key=lambda rotation: rotation.token_hash)
    records = await database.fetch_sql(
        _ROTATE_MANY,
        [r.token_hash for r in rotations],
        [r.now for r in rotations],
        [r.idle_ends_at for r in rotations],
        [new_id() for _ in rotations],
        [r.successor_hash for r in rotations],
        [new_id() for _ in rotations],
        [r.event["type"] for r in rotations],
        [r.event["ip"] for r in rotations],
        [r.event["user_agent"] for r in rotations],
        [encode_detail(r.event["detail"]) for r in rotations],
    )
    rotated = {
        row[0]: (_session(row, 1), user_from_row(row, 1 + _SESSION_WIDTH)) for row in records
    }
    if prepare is not None:
        prepare(rotated)
    return rotated


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


async def purge_ended_batch(database: Database, batch_size: int, *, now: datetime) -> Purged:
    """One short transaction of cleanup (`tasks.purge_ended_sessions` runs them)."""
    async with database.write() as conn:
        return await purge_ended(conn, now=now, batch_size=batch_size)


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
