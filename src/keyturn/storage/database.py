"""Connections: one async engine per backend, with SQLite tuned for many readers and one writer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, TypeVarTuple, overload

import asyncpg
from sqlalchemy import (
    CursorResult,
    Dialect,
    Engine,
    Executable,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.selectable import TypedReturnsRows
from sqlalchemy.util.typing import TupleAny

from keyturn.errors import Unavailable
from keyturn.storage.driver import AsyncpgConnection, SqliteConnection
from keyturn.storage.postgres import TRANSIENT_SQLSTATES, Connections

SQLITE_BUSY_TIMEOUT_MS = 10_000
# How long the write-ahead log may grow (pages of 4 KiB, so about 40 MiB) before the group
# writer's COMMIT copies it into the database file. SQLite's default is 1,000. A checkpoint runs
# inside the COMMIT that crosses the mark, and every write waits for that COMMIT; under a burst
# of refreshes (five pages each, three of them in indexes keyed by random values) one COMMIT
# in eleven did, and each stalled every writer, and so the loop, for 3.6 ms: 9 % of the time.
# A longer log holds more writes to the same pages, so a checkpoint copies fewer pages per
# write: at 10,000 the stalls (17 ms, twice a second) are 3 to 5 % of the time. Readers are
# unaffected: they never wait for a checkpoint, and the log's index is searched by hash.
WRITER_CHECKPOINT_PAGES = 10_000
# A statement that lost to another: deadlock detected, serialization failure.
_CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

_Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")


def _sqlite_engine(url: str, *, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"check_same_thread": False},
    )
    _configure_sqlite(engine.sync_engine, begin=begin)
    return engine


def prepare_sqlite(driver: sqlite3.Connection) -> None:
    """Every keyturn connection to SQLite: WAL, foreign keys, durable commits."""
    # Driver-level autocommit, so that we, not pysqlite, decide how transactions begin.
    driver.isolation_level = None
    # First, so that switching a new file to WAL waits for another process's first
    # transaction (two commands starting on one new file) instead of failing at once.
    driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    driver.execute("PRAGMA journal_mode=WAL")
    driver.execute("PRAGMA foreign_keys=ON")
    # FULL: an acknowledged write survives power loss too, not only a process crash.
    driver.execute("PRAGMA synchronous=FULL")


def _configure_sqlite(engine: Engine, *, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        prepare_sqlite(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads and
        # then writes can fail at once with "database is locked" instead of waiting its turn.
        connection.exec_driver_sql(begin)


class Connection(Protocol):
    """What the stores need of a connection: an `AsyncConnection`, or the SQLite writer's."""

    @property
    def dialect(self) -> Dialect: ...

    @overload
    async def execute(
        self, statement: TypedReturnsRows[*_Ts], parameters: Any = None, /
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self, statement: Executable, parameters: Any = None, /
    ) -> CursorResult[*TupleAny]: ...

    async def exec_driver_sql(self, statement: str, /) -> CursorResult[*TupleAny]: ...


@dataclass(slots=True)
class _Batch:
    committed: asyncio.Future[None]
    broken: bool = False


class _GroupCommitWriter:
    """SQLite writes with group commit: every transaction that arrives while a commit is being
    flushed runs, in its own savepoint, inside the next database transaction, and they all
    share its one COMMIT. A caller returns only after that COMMIT, so an acknowledged write is
    as durable as before; a transaction that raises rolls back to its savepoint, alone.

    One SQLite database admits one writer, and `synchronous=FULL` makes each commit an fsync
    (milliseconds): committing one request at a time caps writes at a few hundred a second.

    One driver connection, used from the loop and from one thread, never both at once: what
    can wait (a BEGIN that another process makes wait, COMMIT's fsync) runs in the thread, the
    rest on the loop. A hop to the thread and back costs the busy loop milliseconds (the
    thread must win the GIL from it, twice), so BEGIN is tried on the loop first without
    waiting, and only a database that another process is writing sends it to the thread.
    """

    def __init__(self, url: str) -> None:
        self._path = make_url(url).database or ""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyturn-writer")
        self._driver: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._batch: _Batch | None = None
        self._committers: set[asyncio.Task[None]] = set()
        # Work a cancelled caller left running in the thread, then undone there (`_in_thread`):
        # the connection is not used again before it ends.
        self._settling: asyncio.Future[None] | None = None
        self._flushing: asyncio.Future[None] | None = None  # a COMMIT in the thread

    async def flushed(self) -> None:
        """Return once the COMMIT being flushed, if any, has been: a transaction started
        before then would only queue behind it. One flush at most: after it the caller queues
        for the lock in turn, as every other writer does."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)

    @asynccontextmanager
    async def transaction(
        self, while_flushing: Callable[[], object] | None = None
    ) -> AsyncIterator[Connection]:
        async with self._lock:
            batch = self._batch or await self._open()
            driver = self._driver
            assert driver is not None  # noqa: S101 (opened by `_open`)
            try:
                driver.execute("SAVEPOINT request")
            except sqlite3.Error as error:
                batch.broken = True
                raise Unavailable("The database failed mid-transaction; try again.") from error
            try:
                yield SqliteConnection(driver)
                driver.execute("RELEASE request")
            except BaseException:
                try:
                    driver.execute("ROLLBACK TO request")
                    driver.execute("RELEASE request")
                except Exception:  # the connection failed: the whole batch must roll back
                    batch.broken = True
                raise
        if while_flushing is not None:
            # The committer, next for the lock once the batch's transactions are done, hands
            # COMMIT to the thread in this turn; the work runs while the disk flushes.
            await asyncio.sleep(0)
            try:
                while_flushing()
            finally:
                await asyncio.shield(batch.committed)
            return
        await asyncio.shield(batch.committed)

    async def _open(self) -> _Batch:
        loop = asyncio.get_running_loop()
        try:
            if self._settling is not None:
                await asyncio.shield(self._settling)
                self._settling = None
            if self._driver is None:
                await self._in_thread(self._connect)
            assert self._driver is not None  # noqa: S101 (set by `_connect`)
            if not _begin_now(self._driver):
                await self._in_thread(_begin_waiting, self._driver)
        except sqlite3.Error as error:  # locked past the busy timeout, unreadable, gone
            raise Unavailable("The database is busy or unreachable; try again.") from error
        committed: asyncio.Future[None] = loop.create_future()
        # Retrieved even when every member rolled back and nobody awaits it.
        committed.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._batch = batch = _Batch(committed)
        committer = loop.create_task(self._commit(batch))
        self._committers.add(committer)
        committer.add_done_callback(self._committers.discard)
        return batch

    async def _in_thread(self, work: Callable[..., None], *args: Any) -> None:
        """`work` in the writer's thread. A caller cancelled meanwhile leaves it running (a
        BEGIN waiting for another process's lock); what it leaves open is rolled back after it,
        in the thread, and the loop waits for that before it uses the connection again."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._thread, work, *args)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self._settling = loop.run_in_executor(self._thread, self._undo)
            raise

    def _undo(self) -> None:
        if self._driver is not None:
            _roll_back(self._driver)

    def _connect(self) -> None:
        driver = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            prepare_sqlite(driver)
            # Each transaction runs in a savepoint, so SQLite keeps the first image of every
            # page it changes in a statement journal. In a temporary file that was half of a
            # refresh's time in SQLite; in memory it is a copy (the batch's pages: kilobytes).
            driver.execute("PRAGMA temp_store=MEMORY")
            # Never waits on the loop: BEGIN is the only statement another process can make it
            # wait on (the transaction then holds the lock), and it waits in the thread.
            driver.execute("PRAGMA busy_timeout=0")
            driver.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        except BaseException:
            driver.close()
            raise
        self._driver = driver  # here, so that a cancelled caller does not lose it

    def _finish(self, batch: _Batch) -> None:
        """In the writer's thread: one COMMIT (one fsync) for every transaction in the batch."""
        driver = self._driver
        assert driver is not None  # noqa: S101 (a batch is open)
        if batch.broken:
            _roll_back(driver)
            raise Unavailable("The database failed mid-transaction; try again.")
        try:
            driver.execute("COMMIT")
        except sqlite3.Error as error:  # the disk is full or failing
            _roll_back(driver)
            raise Unavailable("The database could not commit; try again.") from error
        except BaseException:
            _roll_back(driver)
            raise

    async def _commit(self, batch: _Batch) -> None:
        # Queued on the lock behind every transaction that was waiting when the batch opened.
        async with self._lock:
            self._batch = None
            flushing = self._flushing = asyncio.get_running_loop().create_future()
            try:
                await self._in_thread(self._finish, batch)
            except asyncio.CancelledError:
                batch.committed.cancel()
                raise
            except Exception as error:
                batch.committed.set_exception(error)
            else:
                batch.committed.set_result(None)
            finally:
                self._flushing = None
                flushing.set_result(None)

    async def dispose(self) -> None:
        if self._committers:
            await asyncio.gather(*self._committers, return_exceptions=True)
        self._thread.shutdown(wait=True)  # after anything a cancelled caller left running
        if self._driver is not None:
            self._driver.close()
            self._driver = None


def _begin_now(driver: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE if the write lock is free (microseconds; the writer's busy timeout is
    0); False if another process holds it, and then the caller waits for it off the loop."""
    try:
        driver.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # not another process's lock
            raise
        return False
    return True


def _begin_waiting(driver: sqlite3.Connection) -> None:
    """In the writer's thread: BEGIN IMMEDIATE, waiting up to the busy timeout for the lock."""
    driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    try:
        driver.execute("BEGIN IMMEDIATE")
    finally:
        driver.execute("PRAGMA busy_timeout=0")


_WAL_INDEX_HEADER = 48  # bytes: the first of the two copies of SQLite's WalIndexHdr


def _open_wal_index(reader: sqlite3.Connection, path: str) -> int | None:
    """The `-shm` file of a database in WAL mode, open for reading; None otherwise."""
    (mode,) = reader.execute("PRAGMA journal_mode").fetchone()
    if str(mode).lower() != "wal" or not path or path == ":memory:":
        return None
    try:
        descriptor = os.open(f"{path}-shm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if len(os.pread(descriptor, _WAL_INDEX_HEADER, 0)) < _WAL_INDEX_HEADER:
        os.close(descriptor)
        return None
    return descriptor


def _roll_back(driver: sqlite3.Connection) -> None:
    if driver.in_transaction:
        # If this fails too, SQLite has rolled back the transaction it could not finish.
        with contextlib.suppress(sqlite3.Error):
            driver.execute("ROLLBACK")


class Database:
    """The database keyturn runs on: `read()` and `write()` give short transactions."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            # The file the loop's reader and the `-shm` file of `commit_mark` are opened by.
            self._path = database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._reader = _sqlite_engine(url, begin="BEGIN", pool_size=8)
            # One writer connection per process: SQLite admits one writer at a time anyway,
            # and queueing in the pool is cheaper than spinning on the busy timeout.
            self._writer = _sqlite_engine(url, begin="BEGIN IMMEDIATE", pool_size=1)
            self._group: _GroupCommitWriter | None = _GroupCommitWriter(url)
            self._loop_reader: sqlite3.Connection | None = None
            # The `-shm` file, open for `commit_mark` (None: not opened yet, or not WAL).
            self._wal_index: int | None = None
            self._wal_index_tried = False
            self.postgres: Connections | None = None
        else:
            # The hot paths (write transactions, session look-ups) run straight on asyncpg, on
            # about two connections per core: one event loop drives them, and more only queue
            # inside PostgreSQL (2 cores, GET /me: 4 connections 3,900 req/s, 10: 3,000, 20:
            # 2,300). SQLAlchemy's pool serves the rest (lists, migrations, locks) with half of
            # `pool_size`. No overflow: connections that open and close under load cost more
            # than a short wait for a pooled one (and a PostgreSQL backend process each).
            dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            self.postgres = Connections(dsn, min(pool_size, max(4, 2 * (os.cpu_count() or 1))))
            self._writer = create_async_engine(
                url,
                pool_size=max(2, pool_size // 2),
                max_overflow=0,
                pool_timeout=30,
                pool_recycle=1800,
            )
            # Reads in autocommit: one round trip, not BEGIN, SELECT, ROLLBACK.
            self._reader = self._writer.execution_options(isolation_level="AUTOCOMMIT")
            self._group = None

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

    async def point_read(self, read: Callable[[Connection], Awaitable[_T]]) -> _T:
        """`read` a row or two by a unique index (a login's user): on SQLite straight on the
        event loop (microseconds; aiosqlite's thread hops cost far more), on PostgreSQL one
        round trip on a plain connection. A read that may scan belongs in `read()`.

        On SQLite a busy answer (the loop's reader waits at most 50 ms, and a process that opens
        or closes the file can hold it a little longer) is read again by a pooled reader, which
        waits as long as any other. On PostgreSQL a connection that died with a database
        restart is replaced and the read tried once more (`Connections.run`).
        """
        async with translate_errors():
            if self.postgres is None:
                try:
                    return await read(SqliteConnection(self.loop_reader()))
                except OperationalError:
                    async with self.read() as connection:
                        return await read(connection)
            return await self.postgres.run(lambda raw: read(AsyncpgConnection(raw)))

    async def fetch_sql(self, sql: str, *args: Any) -> list[Any]:
        """PostgreSQL: one statement written in SQL (a batch, with array parameters) in
        autocommit, one round trip (a statement is atomic by itself). A connection found dead
        is replaced and the statement run once more (`Connections.run`), so it must be safe to
        repeat after a commit whose answer was lost. So is one that lost a deadlock or a
        serialization conflict: it rolled back whole, and runs once more."""
        postgres = self.postgres
        if postgres is None:
            raise RuntimeError("fetch_sql is for PostgreSQL")

        async def work(raw: asyncpg.Connection) -> list[Any]:
            return await AsyncpgConnection(raw).fetch_sql(sql, *args)

        async with translate_errors():
            try:
                return await postgres.run(work)
            except Unavailable as error:
                if not isinstance(error.__cause__, _CONFLICTS):
                    raise
            return await postgres.run(work)

    def loop_reader(self) -> sqlite3.Connection:
        """SQLite: the one read-only connection used on the event loop (the session look-up,
        point reads). WAL readers do not wait for the writer; with a 50 ms busy timeout the
        loop is never held long, and the callers treat a busy answer as a failed read."""
        if self._loop_reader is None:
            connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA query_only=1")
            connection.execute("PRAGMA busy_timeout=50")
            self._loop_reader = connection
        return self._loop_reader

    def commit_mark(self) -> object:
        """SQLite: a value that changes whenever any connection, in any process, commits; what
        the loop reader read while it stood still holds.

        In WAL mode that is SQLite's WAL-index header, the first bytes of the `-shm` file:
        every commit rewrites it (a change counter, the last frame and their checksum), and
        SQLite's own readers look there first too. One `pread` of it costs a sixth of
        `PRAGMA data_version`, which begins and ends a read transaction (two file-lock system
        calls). The file stays while this process has the database open: SQLite removes or
        truncates it only when no connection of any process holds it. Other journal modes,
        and a first call, answer with `PRAGMA data_version`.
        """
        if self._wal_index is not None:
            try:
                return os.pread(self._wal_index, _WAL_INDEX_HEADER, 0)
            except OSError:
                self._close_wal_index()
        reader = self.loop_reader()
        (version,) = reader.execute("PRAGMA data_version").fetchone()
        if not self._wal_index_tried:  # the reader has now opened the WAL index, if any
            self._wal_index_tried = True
            self._wal_index = _open_wal_index(reader, self._path)
        return version

    def _close_wal_index(self) -> None:
        if self._wal_index is not None:
            os.close(self._wal_index)
            self._wal_index = None

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
    async def write(
        self, *, while_flushing: Callable[[], object] | None = None
    ) -> AsyncIterator[Connection]:
        """A transaction that commits when the block ends and rolls back when it raises.

        The block returns once the commit is durable. On SQLite it may share that commit with
        other transactions (see `_GroupCommitWriter`), never its rollback.

        `while_flushing` runs once the block has succeeded and before it returns: on SQLite
        while the COMMIT is flushed in the writer's thread, milliseconds in which the loop
        would otherwise wait with nothing to do under a burst of writes; on PostgreSQL after
        the commit. It prepares what the caller would do after the commit anyway (parsing a
        refresh's answer, its signature); whatever it prepared is discarded if the commit fails
        (the block then raises). An error it raises reaches the caller after the commit: the
        transaction was already on its way to the disk.
        """
        if self._group is not None:
            async with (
                translate_errors(),
                self._group.transaction(while_flushing) as connection,
            ):
                yield connection
        elif self.postgres is not None:
            async with translate_errors(), self.postgres.transaction() as raw:
                yield AsyncpgConnection(raw)
            if while_flushing is not None:
                while_flushing()

    async def flushed(self) -> None:
        """SQLite: return once the group commit being flushed, if any, has been (at once on
        PostgreSQL)."""
        if self._group is not None:
            await self._group.flushed()

    async def ping(self) -> bool:
        try:
            async with self.read() as connection:
                await connection.exec_driver_sql("SELECT 1")
        except Unavailable:
            return False
        return True

    async def dispose(self) -> None:
        if self._group is not None:
            await self._group.dispose()
            self._close_wal_index()
            self._wal_index_tried = False
            if self._loop_reader is not None:
                self._loop_reader.close()
                self._loop_reader = None
        if self.postgres is not None:
            await self.postgres.close()
        await self._writer.dispose()
        if self.dialect == "sqlite":  # its own engine; on PostgreSQL a view of the writer's pool
            await self._reader.dispose()


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
        if _sqlstate(error) in TRANSIENT_SQLSTATES:
            raise Unavailable("The database was busy; try again.") from error
        raise
    except (OSError, TimeoutError, PoolTimeout) as error:
        raise Unavailable("The database is unreachable; try again.") from error
