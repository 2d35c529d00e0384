"""SQLAlchemy Core statements run straight on the database driver, on the hot paths.

SQLAlchemy compiles each statement once (per set of inserted columns); the driver runs it. A
statement through SQLAlchemy's own execution costs about 35 µs of CPU on SQLite (prebuilt) and
140 µs through its asyncpg adapter (greenlets, cursor emulation, result buffering), BEGIN with
COMMIT another 300 µs there; the driver needs 5 to 25 µs, and a refresh is seven statements.
Results keep SQLAlchemy's API (`first`, `one`, `_mapping`, `rowcount`), so the stores are
written once, against `storage.database.Connection`, for both paths.

Limits, checked when a statement is first compiled: no column defaults computed in Python
(the stores pass every column).
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy import CursorResult, Dialect, Executable, Insert
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.engine.row import Row
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    MultipleResultsFound,
    NoResultFound,
    OperationalError,
)
from sqlalchemy.sql.elements import ClauseElement

from keyturn.errors import Unavailable
from keyturn.storage.postgres import LOST, TRANSIENT_SQLSTATES

POSTGRESQL = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
SQLITE = SQLiteDialect_pysqlite()


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled once for a driver: its SQL, parameter order and value converters."""

    sql: str
    binds: tuple[tuple[str, Any, Any], ...]  # per position: name, compiled-in value, converter
    keys: tuple[str, ...]  # result column names
    converters: tuple[tuple[int, Any], ...]  # (position, converter) of the columns that need one
    metadata: SimpleResultMetaData  # shared by every result, as SQLAlchemy's own cache does

    @property
    def returns_rows(self) -> bool:
        return bool(self.keys)

    def args(self, parameters: dict[str, Any] | None) -> list[Any]:
        # What SQLAlchemy's `construct_params` would give, without rebuilding its dict of
        # every bind per call: a value passed by name, else the one compiled into the statement.
        get = (parameters or {}).get
        return [
            get(name, default) if convert is None else convert(get(name, default))
            for name, default, convert in self.binds
        ]

    def rows(self, records: list[Any]) -> list[Row[Any]]:
        """SQLAlchemy `Row`s (by position, by name, `_mapping`), built as its own results do."""
        metadata, index = self.metadata, self.metadata._key_to_index
        if not self.converters:
            return [Row(metadata, None, index, tuple(r)) for r in records]
        rows: list[Row[Any]] = []
        for record in records:
            values = list(record)
            for position, convert in self.converters:
                values[position] = convert(values[position])
            rows.append(Row(metadata, None, index, tuple(values)))
        return rows


# Per statement object (a module-level one lives on; one built per call goes with it), per
# dialect and set of inserted columns.
_plans: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[str, ...]], _Plan]] = (
    weakref.WeakKeyDictionary()
)


def _plan(statement: Executable, parameters: Any, dialect: Dialect) -> _Plan:
    first = parameters[0] if isinstance(parameters, list) else parameters
    keys = tuple(first) if isinstance(statement, Insert) and first else ()
    by_keys = _plans.get(statement)
    if by_keys is None:
        by_keys = _plans[statement] = {}
    plan = by_keys.get((dialect.name, keys))
    if plan is None:
        compiled: Any = cast(ClauseElement, statement).compile(
            dialect=dialect,
            column_keys=list(keys) if keys else None,
            compile_kwargs={"render_postcompile": True},
        )
        if compiled.insert_prefetch or compiled.update_prefetch:
            # Column defaults computed in Python are filled in by SQLAlchemy's execution
            # context, which this path skips: the stores pass every column.
            raise RuntimeError("statement relies on Python-side column defaults")
        if compiled.escaped_bind_names:
            raise RuntimeError("statement has bind names that need escaping")
        names = tuple(compiled.positiontup or ())
        processors = compiled._bind_processors
        compiled_in = compiled.construct_params(None, _check=False)
        columns = compiled._result_columns or []
        result_keys = tuple(c[0] for c in columns)
        plan = _Plan(
            sql=compiled.string,
            binds=tuple((n, compiled_in[n], processors.get(n)) for n in names),
            keys=result_keys,
            converters=tuple(
                (position, convert)
                for position, column in enumerate(columns)
                if (convert := column[3]._cached_result_processor(dialect, None)) is not None
            ),
            metadata=SimpleResultMetaData(list(result_keys)),
        )
        by_keys[(dialect.name, keys)] = plan
    return plan


class _Rows:
    """Rows already fetched, with the part of SQLAlchemy's result API the stores use
    (`first`, `one`, `one_or_none`, `scalar`, `scalar_one`, `all`, `fetchall`, iteration,
    `rowcount`; no `scalars()` or `mappings()`: a store that needs them adds them here).
    SQLAlchemy's own result classes cost more than the statement here (buffering strategies,
    soft close)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Row[Any]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Row[Any]]:
        return iter(self._rows)

    def fetchall(self) -> list[Row[Any]]:
        return list(self._rows)

    all = fetchall

    def first(self) -> Row[Any] | None:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Row[Any] | None:
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return self._rows[0] if self._rows else None

    def one(self) -> Row[Any]:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


_NONE: list[Row[Any]] = []


def _rowcount(status: str) -> int:
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


def _translate_asyncpg(error: Exception, sql: str) -> Exception:
    """asyncpg's errors as the SQLAlchemy ones the stores and `translate_errors` expect."""
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(sql, None, error)
    if isinstance(error, LOST):
        return Unavailable("The database connection was lost; try again.")
    if isinstance(error, asyncpg.PostgresError) and error.sqlstate in TRANSIENT_SQLSTATES:
        return Unavailable("The database was busy; try again.")
    return DBAPIError(sql, None, error)


class AsyncpgConnection:
    """A write transaction's connection: the `Connection` the stores use (see database.py),
    with each statement compiled by SQLAlchemy once and run by asyncpg."""

    __slots__ = ("_raw",)

    def __init__(self, raw: asyncpg.Connection) -> None:
        self._raw = raw

    @property
    def dialect(self) -> Dialect:
        return POSTGRESQL

    async def execute(self, statement: Executable, parameters: Any = None, /) -> CursorResult[Any]:
        if isinstance(parameters, list) and len(parameters) == 1:
            parameters = parameters[0]  # one row: cheaper as a plain statement
        many = isinstance(parameters, list)
        plan = _plan(statement, parameters, POSTGRESQL)
        try:
            if many:
                await self._raw.executemany(plan.sql, [plan.args(p) for p in parameters])
                result = _Rows(_NONE, len(parameters))
            elif plan.returns_rows:
                records = await self._raw.fetch(plan.sql, *plan.args(parameters))
                result = _Rows(plan.rows(records), len(records))
            else:
                status = await self._raw.execute(plan.sql, *plan.args(parameters))
                result = _Rows(_NONE, _rowcount(status))
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate_asyncpg(error, plan.sql) from error
        return cast(CursorResult[Any], result)

    async def fetch_sql(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A statement written in SQL (a batch with array parameters): asyncpg's records."""
        try:
            records: list[asyncpg.Record] = await self._raw.fetch(sql, *args)
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate_asyncpg(error, sql) from error
        return records

    async def exec_driver_sql(self, statement: str, /) -> CursorResult[Any]:
        try:
            await self._raw.execute(statement)
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate_asyncpg(error, statement) from error
        return cast(CursorResult[Any], _Rows(_NONE, 0))


def _translate_sqlite(error: sqlite3.Error, sql: str) -> Exception:
    if isinstance(error, sqlite3.IntegrityError):
        return IntegrityError(sql, None, error)
    if isinstance(error, sqlite3.OperationalError):  # busy, locked, disk I/O
        return OperationalError(sql, None, error)
    return DBAPIError(sql, None, error)


class SqliteConnection:
    """A write transaction's connection on SQLite: the stdlib driver, used from the event loop.

    Inside a write transaction (the write lock is already ours) a statement only touches pages
    in memory: microseconds, less than one hop to a worker thread. What can wait on the disk or
    on another process (BEGIN IMMEDIATE, COMMIT's fsync) runs in the writer's thread
    (storage/database.py).
    """

    __slots__ = ("_driver",)

    def __init__(self, driver: sqlite3.Connection) -> None:
        self._driver = driver

    @property
    def dialect(self) -> Dialect:
        return SQLITE

    async def execute(self, statement: Executable, parameters: Any = None, /) -> CursorResult[Any]:
        if isinstance(parameters, list) and len(parameters) == 1:
            parameters = parameters[0]  # one row (an audit event): half executemany's cost
        plan = _plan(statement, parameters, SQLITE)
        try:
            if isinstance(parameters, list):
                self._driver.executemany(plan.sql, [plan.args(p) for p in parameters])
                result = _Rows(_NONE, len(parameters))
            else:
                cursor = self._driver.execute(plan.sql, plan.args(parameters))
                if plan.returns_rows:
                    rows = plan.rows(cursor.fetchall())
                    result = _Rows(rows, len(rows))
                else:
                    result = _Rows(_NONE, cursor.rowcount)
        except sqlite3.Error as error:
            raise _translate_sqlite(error, plan.sql) from error
        return cast(CursorResult[Any], result)

    async def fetch_sql(self, sql: str, *args: Any) -> list[Any]:
        """A statement written in SQL: the driver's own rows (tuples), nothing converted."""
        try:
            return self._driver.execute(sql, args).fetchall()
        except sqlite3.Error as error:
            raise _translate_sqlite(error, sql) from error

    async def run_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """A statement written in SQL, once per row of values bound as they are."""
        try:
            self._driver.executemany(sql, rows)
        except sqlite3.Error as error:
            raise _translate_sqlite(error, sql) from error

    async def exec_driver_sql(self, statement: str, /) -> CursorResult[Any]:
        try:
            self._driver.execute(statement).fetchall()
        except sqlite3.Error as error:
            raise _translate_sqlite(error, statement) from error
        return cast(CursorResult[Any], _Rows(_NONE, 0))
