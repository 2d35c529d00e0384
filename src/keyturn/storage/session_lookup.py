"""The hot path: find a session and its user by id, once per protected request, as cheaply as
the backend allows.

SQLite: a primary-key read through the stdlib driver on the event loop takes about 10 µs, far
less than aiosqlite's hops to a worker thread (~95 µs); in WAL mode a reader never waits for a
writer, and a rare busy answer falls back to the ordinary async path. PostgreSQL: one prepared
statement on a small set of plain asyncpg connections, in autocommit, is one round trip
instead of three (BEGIN, SELECT, ROLLBACK), without SQLAlchemy's per-statement work or
asyncpg's pool bookkeeping; and the look-ups that requests make in the same turn of the event
loop share that round trip (one `= ANY($1)` query; storage/batching.py), as a DataLoader
batches. Each request's look-up still starts after the request arrived, so a revocation
committed before it is seen.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Table

from keyturn.storage import sessions as session_store
from keyturn.storage.batching import TurnBatch
from keyturn.storage.database import Database
from keyturn.storage.postgres import Connections
from keyturn.storage.records import Session, User, session_and_user
from keyturn.storage.schema import UTCDateTime, optional_sqlite_time, sessions, users


def _prefixed(alias: str, table: Table, *, epoch_us: bool = False) -> str:
    names = [f"{alias}.{column.name}" for column in table.c]
    if epoch_us:
        # Timestamps as integer microseconds since 1970: asyncpg's datetime decoding was a
        # tenth of a GET /me, and an unchanged row (the usual case) needs none (`_remember`).
        names = [
            f"CAST(EXTRACT(EPOCH FROM {name}) * 1000000 AS BIGINT)"
            if isinstance(column.type, UTCDateTime)
            else name
            for name, column in zip(names, table.c, strict=True)
        ]
    return ", ".join(names)


def _select(*, epoch_us: bool) -> str:
    # Built from the schema only, never from input: the id is always a bound parameter. The
    # columns come in table order, which is the order of the `Session` and `User` fields.
    return (
        f"SELECT {_prefixed('s', sessions, epoch_us=epoch_us)}, "  # noqa: S608
        f"{_prefixed('u', users, epoch_us=epoch_us)} "
        "FROM sessions AS s JOIN users AS u ON u.id = s.user_id WHERE s.id "
    )


_SQLITE_SELECT = _select(epoch_us=False) + "= ?"
_POSTGRES_SELECT = _select(epoch_us=True) + "= ANY($1::varchar[])"
_MEMO_LIMIT = 10_000


def _pg_time(value: int | None) -> datetime | None:
    if value is None:
        return None
    seconds, microseconds = divmod(value, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=microseconds)


class SessionLookup:
    def __init__(self, database: Database) -> None:
        self.database = database
        # The last row read per session and the records built from it: the row is fetched on
        # every request (that is the revocation check); only the parsing is skipped when the
        # row has not changed since.
        self._built: dict[str, tuple[tuple[Any, ...], tuple[Session, User]]] = {}
        # SQLite: what was read while the database stood at `_version` (`commit_mark`, which
        # moves whenever any connection, in any process, commits).
        self._version: object = None
        self._unchanged: dict[str, tuple[Session, User]] = {}
        # PostgreSQL: the look-ups of one turn of the event loop share one query.
        connections = database.postgres
        self._batch = None if connections is None else TurnBatch(partial(self._fetch, connections))

    async def find(self, session_id: str) -> tuple[Session, User] | None:
        if self.database.dialect == "sqlite":
            try:
                return self._find_sqlite(session_id)
            except sqlite3.Error:
                pass  # busy or odd: the async path below waits properly
        elif self._batch is not None:
            return await self._batch.submit(session_id, session_id)
        async with self.database.read() as conn:
            return await session_store.get_session_and_user(conn, session_id)

    def _find_sqlite(self, session_id: str) -> tuple[Session, User] | None:
        # The revocation check, at a fraction of the cost of the read: if nothing was
        # committed since this session was last read, what was read then still holds. A commit
        # between this and the read below only makes the next call read again.
        version = self.database.commit_mark()
        if version == self._version:
            unchanged = self._unchanged.get(session_id)
            if unchanged is not None:
                return unchanged
        else:
            self._version = version
            self._unchanged.clear()
        # fetchall, not fetchone: stepping to the end resets the statement, so no read
        # transaction (and no stale WAL snapshot) outlives this call. A busy answer falls
        # back to the async path.
        rows = self.database.loop_reader().execute(_SQLITE_SELECT, (session_id,)).fetchall()
        found = self._remember(session_id, rows[0] if rows else None, optional_sqlite_time)
        if found is not None and len(self._unchanged) < _MEMO_LIMIT:
            self._unchanged[session_id] = found
        return found

    async def _fetch(
        self, connections: Connections, ids: dict[str, str]
    ) -> dict[str, tuple[Session, User] | None]:
        """One query for the look-ups of a turn of the loop (see storage/batching.py)."""
        fetched = await connections.fetch(_POSTGRES_SELECT, list(ids))
        rows = {row[0]: tuple(row) for row in fetched}
        return {sid: self._remember(sid, rows.get(sid), _pg_time) for sid in ids}

    def _remember(
        self, session_id: str, row: tuple[Any, ...] | None, time: Any
    ) -> tuple[Session, User] | None:
        if row is None:
            self._built.pop(session_id, None)
            return None
        known = self._built.get(session_id)
        if known is not None and known[0] == row:
            return known[1]
        records = session_and_user(row, time)
        if len(self._built) >= _MEMO_LIMIT:
            self._built.clear()
        self._built[session_id] = (row, records)
        return records
