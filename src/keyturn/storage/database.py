"""Connections: one async engine per backend, with SQLite tuned for many readers and one writer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from keyturn.errors import Unavailable

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_engine(url: str, *, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"check_same_thread": False},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Driver-level autocommit, so that we, not pysqlite, decide how transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL: an acknowledged write survives power loss too, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads and
        # then writes can fail at once with "database is locked" instead of waiting its turn.
        connection.exec_driver_sql(begin)

    return engine


class Database:
    """The database keyturn runs on: `read()` and `write()` give short transactions."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._reader = _sqlite_engine(url, begin="BEGIN", pool_size=8)
            # One writer connection per process: SQLite admits one writer at a time anyway,
            # and queueing in the pool is cheaper than spinning on the busy timeout.
            self._writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE", pool_size=1)
        else:
            # No overflow: connections that open and close under load cost more than a short
            # wait for a pooled one (and a PostgreSQL backend process each).
            self._writer = create_async_engine(
                url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_recycle=1800
            )
            # Reads in autocommit: one round trip, not BEGIN, SELECT, ROLLBACK.
            self._reader = self._writer.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def engine(self) -> AsyncEngine:
        """The engine that may write (migrations, maintenance)."""
        return self._writer

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with translate_errors(), self._reader.connect() as connection:
            yield connection

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A writer connection whose transactions the caller manages (migrations, locks)."""
        async with translate_errors(), self._writer.connect() as connection:
            yield connection

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """Like `read()`, but every statement sees the same state (for reads that span many).

        PostgreSQL's default READ COMMITTED gives each statement a new snapshot; SQLite's
        deferred transaction already keeps one from its first read (WAL mode).
        """
        async with translate_errors(), self._reader.connect() as connection:
            if self.dialect == "postgresql":
                await connection.execution_options(isolation_level="REPEATABLE READ")
            yield connection

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends and rolls back when it raises."""
        async with translate_errors(), self._writer.begin() as connection:
            yield connection

    async def ping(self) -> bool:
        try:
            async with self.read() as connection:
                await connection.exec_driver_sql("SELECT 1")
        except Unavailable:
            return False
        return True

    async def dispose(self) -> None:
        await self._writer.dispose()
        if self.dialect == "sqlite":  # its own engine; on PostgreSQL a view of the writer's pool
            await self._reader.dispose()


# PostgreSQL: deadlock detected, serialization failure, lock not available, too many connections.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03", "53300"})


def _sqlstate(error: DBAPIError) -> str | None:
    original = error.orig
    code = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    return code if isinstance(code, str) else None


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """A database that is down or locked becomes a clean 503, never a 500 with SQL in it."""
    try:
        yield
    except OperationalError as error:
        raise Unavailable("The database is busy or unreachable; try again.") from error
    except DBAPIError as error:
        if error.connection_invalidated:
            raise Unavailable("The database connection was lost; try again.") from error
        if _sqlstate(error) in _TRANSIENT_SQLSTATES:
            raise Unavailable("The database was busy; try again.") from error
        raise
    except (OSError, TimeoutError, PoolTimeout) as error:
        raise Unavailable("The database is unreachable; try again.") from error
