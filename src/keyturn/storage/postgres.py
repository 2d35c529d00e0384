"""PostgreSQL straight on asyncpg for the hot paths (session look-ups, write transactions):
a small set of plain connections. What runs on them is in storage/driver.py."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from keyturn.errors import Unavailable

_T = TypeVar("_T")

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


# Everything run on these connections finds its rows by key. On a new database, without
# statistics yet, PostgreSQL plans a small table's look-up as a sequential scan, and a prepared
# statement's cached plan keeps that scan as the table grows (until an ANALYZE): a batched
# refresh read 1,100 pages at a few thousand rows. Without sequential scans the planner takes
# the index whatever it believes the table's size is (a statement without a usable index
# still scans, at a higher estimate; none run here lacks one). A SET after connecting, not a
# startup parameter, which PgBouncer would refuse.
_HOT_PATH_SETTINGS = "SET enable_seqscan = off"


def is_lost(error: BaseException) -> bool:
    """The connection died (directly, or behind the error it was translated into)."""
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

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """`work` on a connection in autocommit: a read, or a single statement.

        A connection found dead (after a database restart every idle one is) is dropped and
        `work` tried once more on a newly opened one, as a transaction's BEGIN is; so `work`
        must be safe to repeat. Dead twice: `Unavailable`.
        """
        connection = await self._take()  # one that cannot be opened is already `Unavailable`
        try:
            return await self._run_on(connection, work)
        except Exception as error:
            if not is_lost(error):
                raise
        try:
            return await self._run_on(await self._acquire(), work)
        except LOST as error:
            raise Unavailable("The database is unreachable; try again.") from error

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self.run(lambda connection: connection.fetch(query, *args))
        return rows

    async def _run_on(
        self, connection: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[_T]]
    ) -> _T:
        try:
            result = await work(connection)
        except BaseException as error:
            self._after(connection, error)
            raise
        self._release(connection)
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside BEGIN … COMMIT (ROLLBACK when the block raises)."""
        connection = await self._take()
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
            self._after(connection, error)
            raise
        self._release(connection)

    async def _take(self) -> asyncpg.Connection:
        return self._idle.pop() if self._idle else await self._acquire()

    def _after(self, connection: asyncpg.Connection, error: BaseException) -> None:
        """Back to the set after a refused request; dropped after a broken or cancelled one."""
        if isinstance(error, Exception) and not connection.is_closed() and not is_lost(error):
            self._release(connection)
        else:
            self._drop(connection)

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            if self._closed:
                raise Unavailable("The server is shutting down.")
            if self._opened < self._size:
                self._opened += 1
                try:
                    # Statements are prepared once per connection: one round trip each after.
                    connection = await asyncpg.connect(self._dsn, statement_cache_size=128)
                    try:
                        await connection.execute(_HOT_PATH_SETTINGS)
                    except BaseException:
                        connection.terminate()
                        raise
                    return connection
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
