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
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy import CursorResult, Dialect, Executable, Insert
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util.typing import TupleAny

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
    results: tuple[Any, ...]  # per result column: a converter or None
    metadata: SimpleResultMetaData  # shared by every result, as SQLAlchemy's own cache does

    @property
    def returns_rows(self) -> bool:
        return bool(self.keys)

    def args(self, parameters: dict[str, Any] | None) -> list[Any]:
        # What SQLAlchemy's `construct_params` would give, without rebuilding its dict of
        # every bind per call: a value passed by name, else the one compiled into the statement.
        given = parameters or {}
        return [
            value if convert is None else convert(value)
            for name, default, convert in self.binds
            for value in (given.get(name, default),)
        ]

    def rows(self, records: list[Any]) -> list[tuple[Any, ...]]:
        if not any(self.results):
            return [tuple(r) for r in records]
        return [
            tuple(v if c is None else c(v) for c, v in zip(self.results, r, strict=True))
            for r in records
        ]


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
            results=tuple(c[3]._cached_result_processor(dialect, None) for c in columns),
            metadata=SimpleResultMetaData(list(result_keys)),
        )
        by_keys[(dialect.name, keys)] = plan
    return plan


class _Rows(IteratorResult[*TupleAny]):
    """Rows already fetched, with SQLAlchemy's result API (`first`, `one`, `_mapping`...)."""

    def __init__(
        self, metadata: SimpleResultMetaData, rows: list[tuple[Any, ...]], rowcount: int
    ) -> None:
        super().__init__(metadata, iter(rows))
        self.rowcount = rowcount


_NO_COLUMNS = SimpleResultMetaData([])


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
        many = isinstance(parameters, list)
        plan = _plan(statement, parameters, POSTGRESQL)
        try:
            if many:
                await self._raw.executemany(plan.sql, [plan.args(p) for p in parameters])
                result = _Rows(plan.metadata, [], len(parameters))
            elif plan.returns_rows:
                records = await self._raw.fetch(plan.sql, *plan.args(parameters))
                result = _Rows(plan.metadata, plan.rows(records), len(records))
            else:
                status = await self._raw.execute(plan.sql, *plan.args(parameters))
                result = _Rows(_NO_COLUMNS, [], _rowcount(status))
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate_asyncpg(error, plan.sql) from error
        return cast(CursorResult[Any], result)

    async def exec_driver_sql(self, statement: str, /) -> CursorResult[Any]:
        try:
            await self._raw.execute(statement)
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate_asyncpg(error, statement) from error
        return cast(CursorResult[Any], _Rows(_NO_COLUMNS, [], 0))


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
        plan = _plan(statement, parameters, SQLITE)
        try:
            if isinstance(parameters, list):
                self._driver.executemany(plan.sql, [plan.args(p) for p in parameters])
                result = _Rows(plan.metadata, [], len(parameters))
            else:
                cursor = self._driver.execute(plan.sql, plan.args(parameters))
                if plan.returns_rows:
                    rows = plan.rows(cursor.fetchall())
                    result = _Rows(plan.metadata, rows, len(rows))
                else:
                    result = _Rows(_NO_COLUMNS, [], cursor.rowcount)
        except sqlite3.Error as error:
            raise _translate_sqlite(error, plan.sql) from error
        return cast(CursorResult[Any], result)

    async def exec_driver_sql(self, statement: str, /) -> CursorResult[Any]:
        try:
            self._driver.execute(statement).fetchall()
        except sqlite3.Error as error:
            raise _translate_sqlite(error, statement) from error
        return cast(CursorResult[Any], _Rows(_NO_COLUMNS, [], 0))
