"""PostgreSQL straight on asyncpg, for the hot paths: a small set of connections, and write
transactions whose statements SQLAlchemy compiles once and asyncpg runs.

Through SQLAlchemy's asyncpg adapter a statement costs about 140 µs of CPU and BEGIN with
COMMIT about 300 µs, mostly in the adapter (greenlets, cursor emulation, result buffering);
asyncpg itself needs about 25 µs for a prepared statement. A refresh is seven statements.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy import CursorResult, Dialect, Executable, Insert
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util.typing import TupleAny

from keyturn.errors import Unavailable

# A connection that died or could not be reached. An idle connection whose backend was
# terminated can also surface as an internal protocol-state error on its next use.
LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# Deadlock detected, serialization failure, lock not available, too many connections.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03", "53300"})


def _broken(error: BaseException) -> bool:
    return isinstance(error, LOST) or isinstance(error.__cause__, LOST)


class Connections:
    """Plain asyncpg connections for the hot paths: session look-ups and write transactions.

    asyncpg's pool costs more CPU per acquire and release (timeouts, a reset query, inactivity
    timers) than a look-up's query itself: about 35 µs against 22 µs. This keeps idle
    connections on a stack and hands a returned one straight to the next waiter. A connection
    that fails or is interrupted is dropped; the next call opens another.
    """

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._size = size
        self._idle: list[asyncpg.Connection] = []
        self._opened = 0
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    async def fetchrow(self, query: str, *args: Any) -> Any:
        connection = self._idle.pop() if self._idle else await self._acquire()
        try:
            row = await connection.fetchrow(query, *args)
        except BaseException:
            self._drop(connection)
            raise
        self._release(connection)
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside BEGIN … COMMIT (ROLLBACK when the block raises)."""
        connection = self._idle.pop() if self._idle else await self._acquire()
        try:
            transaction = connection.transaction()
            try:
                await transaction.start()
            except LOST:  # an idle connection that died (a database restart): one fresh try
                self._drop(connection)
                connection = await self._acquire()
                transaction = connection.transaction()
                await transaction.start()
            try:
                yield connection
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
        except BaseException as error:
            if isinstance(error, Exception) and not connection.is_closed() and not _broken(error):
                self._release(connection)  # a refused request, not a broken connection
            else:
                self._drop(connection)
            raise
        self._release(connection)

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise Unavailable("The server is shutting down.")
            if self._opened < self._size:
                self._opened += 1
                try:
                    # Statements are prepared once per connection: one round trip each after.
                    return await asyncpg.connect(self._dsn, statement_cache_size=128)
                except BaseException as error:
                    self._opened -= 1
                    self._hand_over(None)
                    if isinstance(error, (asyncpg.PostgresError, *LOST)):
                        raise Unavailable("The database is unreachable; try again.") from error
                    raise
            waiter: asyncio.Future[asyncpg.Connection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                connection = await waiter  # None: a slot was freed, open a connection
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result())  # handed over just as we were cancelled
                raise
            if connection is not None:
                return connection

    def _hand_over(self, connection: asyncpg.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def _release(self, connection: asyncpg.Connection) -> None:
        if self._closed:
            self._drop(connection)
        elif not self._hand_over(connection):
            self._idle.append(connection)

    def _drop(self, connection: asyncpg.Connection) -> None:
        if not connection.is_closed():
            connection.terminate()
        self._opened -= 1
        self._hand_over(None)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._opened -= 1
            await connection.close()
        self._hand_over(None)


_PG_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled once for asyncpg: its SQL, parameter order and value converters."""

    sql: str
    names: tuple[str, ...]
    compiled: Any
    bind: tuple[Any, ...]  # per position: a converter or None
    keys: tuple[str, ...]  # result column names
    results: tuple[Any, ...]  # per result column: a converter or None
    returns_rows: bool

    def args(self, parameters: dict[str, Any] | None) -> list[Any]:
        values = self.compiled.construct_params(parameters or None, _check=False)
        return [
            value if convert is None else convert(value)
            for convert, value in zip(self.bind, (values[n] for n in self.names), strict=True)
        ]

    def rows(self, records: list[Any]) -> list[tuple[Any, ...]]:
        if not any(self.results):
            return [tuple(r) for r in records]
        return [
            tuple(v if c is None else c(v) for c, v in zip(self.results, r, strict=True))
            for r in records
        ]


_plans: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], _Plan]] = weakref.WeakKeyDictionary()


def _plan(statement: Executable, keys: tuple[str, ...]) -> _Plan:
    by_keys = _plans.get(statement)
    if by_keys is None:
        by_keys = _plans[statement] = {}
    plan = by_keys.get(keys)
    if plan is None:
        compiled: Any = cast(ClauseElement, statement).compile(
            dialect=_PG_DIALECT,
            column_keys=list(keys) if keys else None,
            compile_kwargs={"render_postcompile": True},
        )
        if compiled.insert_prefetch or compiled.update_prefetch:
            # Column defaults computed in Python are filled in by SQLAlchemy's execution
            # context, which this path skips: the stores pass every column.
            raise RuntimeError("statement relies on Python-side column defaults")
        names = tuple(compiled.positiontup or ())
        processors = compiled._bind_processors
        columns = compiled._result_columns or []
        plan = _Plan(
            sql=compiled.string,
            names=names,
            compiled=compiled,
            bind=tuple(processors.get(n) for n in names),
            keys=tuple(c[0] for c in columns),
            results=tuple(c[3]._cached_result_processor(_PG_DIALECT, None) for c in columns),
            returns_rows=bool(columns),
        )
        by_keys[keys] = plan
    return plan


class _Rows(IteratorResult[*TupleAny]):
    """Rows already fetched, with SQLAlchemy's result API (`first`, `one`, `_mapping`...)."""

    def __init__(self, keys: tuple[str, ...], rows: list[tuple[Any, ...]], rowcount: int) -> None:
        super().__init__(SimpleResultMetaData(list(keys)), iter(rows))
        self.rowcount = rowcount


def _rowcount(status: str) -> int:
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


def _translate(error: Exception, sql: str) -> Exception:
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
        return _PG_DIALECT

    async def execute(self, statement: Executable, parameters: Any = None, /) -> CursorResult[Any]:
        many = isinstance(parameters, list)
        first = parameters[0] if many else parameters
        keys = tuple(first) if isinstance(statement, Insert) and first else ()
        plan = _plan(statement, keys)
        try:
            if many:
                await self._raw.executemany(plan.sql, [plan.args(p) for p in parameters])
                result = _Rows(plan.keys, [], len(parameters))
            elif plan.returns_rows:
                records = await self._raw.fetch(plan.sql, *plan.args(parameters))
                result = _Rows(plan.keys, plan.rows(records), len(records))
            else:
                status = await self._raw.execute(plan.sql, *plan.args(parameters))
                result = _Rows((), [], _rowcount(status))
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate(error, plan.sql) from error
        return cast(CursorResult[Any], result)

    async def exec_driver_sql(self, statement: str, /) -> CursorResult[Any]:
        try:
            await self._raw.execute(statement)
        except (asyncpg.PostgresError, *LOST) as error:
            raise _translate(error, statement) from error
        return cast(CursorResult[Any], _Rows((), [], 0))
