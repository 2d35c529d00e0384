"""Write transactions: many at once all commit, one that fails rolls back alone, an answered
write is already visible to everyone, and waiting for another process's lock never stalls the
event loop (SQLite commits concurrent transactions together, see storage/database.py)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from keyturn import Keyturn
from keyturn.errors import EmailTaken, Unavailable
from keyturn.storage import migrate
from keyturn.storage import users as user_store
from keyturn.storage.database import WRITER_CHECKPOINT_PAGES, Connection, Database
from tests.actions import PASSWORD, bearer, register
from tests.clock import FakeClock
from tests.conftest import settings_for
from tests.databases import _asyncpg_dsn, postgres_admin_url, sqlite_file
from tests.instances import client_of, started


class Refused(Exception):
    pass


async def _insert_user(conn: Connection, index: int, *, email_of: int | None = None) -> None:
    await user_store.insert_user(
        conn,
        user_id=f"{index:032x}",
        email=f"writer{index if email_of is None else email_of}@example.com",
        name=None,
        password_hash="x",
        is_admin=False,
        now=datetime.now(UTC),
    )


async def _insert(database: Database, index: int, *, fail: bool = False) -> None:
    async with database.write() as conn:
        await _insert_user(conn, index)
        if fail:
            raise Refused()


async def _exists(database: Database, index: int) -> bool:
    async with database.read() as conn:
        return await user_store.get_user(conn, f"{index:032x}") is not None


async def test_concurrent_writes_all_commit_and_a_failing_one_rolls_back_alone(
    keyturn: Keyturn,
) -> None:
    database = keyturn.database
    results = await asyncio.gather(
        *(_insert(database, i, fail=(i == 7)) for i in range(24)), return_exceptions=True
    )
    assert [type(r) for r in results if r is not None] == [Refused]
    assert [i for i in range(24) if not await _exists(database, i)] == [7]


async def test_work_while_flushing_runs_after_a_block_that_succeeded_before_it_returns(
    keyturn: Keyturn,
) -> None:
    database = keyturn.database
    order: list[str] = []
    flushing: list[bool] = []

    def prepare() -> None:
        order.append("prepared")
        if database.is_sqlite:  # the batch's COMMIT is in the writer's thread meanwhile
            flushing.append(database._group._flushing is not None)  # type: ignore[union-attr]

    async with database.write(while_flushing=prepare) as conn:
        await _insert_user(conn, 1)
        order.append("block")
    order.append("returned")
    assert order == ["block", "prepared", "returned"]
    assert await _exists(database, 1)
    assert flushing == ([True] if database.is_sqlite else [])

    with pytest.raises(Refused):
        async with database.write(while_flushing=lambda: order.append("again")):
            raise Refused()
    assert "again" not in order


async def test_an_email_conflict_fails_only_its_own_transaction(keyturn: Keyturn) -> None:
    database = keyturn.database
    await _insert(database, 1)

    async def duplicate() -> None:  # the email of index 1, under a new id
        async with database.write() as conn:
            await _insert_user(conn, 99, email_of=1)

    results = await asyncio.gather(
        duplicate(), _insert(database, 2), _insert(database, 3), return_exceptions=True
    )
    assert isinstance(results[0], EmailTaken)
    assert list(results[1:]) == [None, None]
    assert [await _exists(database, i) for i in (1, 2, 3, 99)] == [True, True, True, False]


def _file(keyturn: Keyturn) -> str:
    return sqlite_file(keyturn.settings.database_url)


async def test_an_answered_sqlite_write_is_in_the_file_for_any_other_connection(
    sqlite_keyturn: Keyturn,
) -> None:
    await asyncio.gather(*(_insert(sqlite_keyturn.database, i) for i in range(8)))
    with sqlite3.connect(_file(sqlite_keyturn)) as other:
        (count,) = other.execute("SELECT count(*) FROM users WHERE email LIKE 'writer%'").fetchone()
    assert count == 8


async def test_a_sqlite_file_that_cannot_be_opened_makes_a_write_unavailable(
    tmp_path: Path,
) -> None:
    """A clean 503 (Unavailable), never the driver's own error, which would be a 500."""
    unopenable = tmp_path / "a-directory.db"
    unopenable.mkdir()
    database = Database(f"sqlite+aiosqlite:///{unopenable}")
    try:
        with pytest.raises(Unavailable):
            await _insert(database, 1)
    finally:
        await database.dispose()


async def test_a_write_cancelled_while_waiting_for_another_process_s_lock_leaves_none_open(
    sqlite_keyturn: Keyturn,
) -> None:
    """Its BEGIN goes on waiting in the writer's thread; when it gets the lock after all, the
    transaction nobody owns is rolled back, before the connection serves the next write."""
    keyturn = sqlite_keyturn
    other = sqlite3.connect(_file(keyturn), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    waiting = asyncio.create_task(_insert(keyturn.database, 1))
    await asyncio.sleep(0.2)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    other.execute("COMMIT")
    await asyncio.wait_for(_insert(keyturn.database, 2), timeout=5)
    assert not await _exists(keyturn.database, 1)
    assert await _exists(keyturn.database, 2)
    other.execute("BEGIN IMMEDIATE")  # the lock is free again for another process
    other.execute("ROLLBACK")
    other.close()


async def test_sqlite_writes_journal_their_savepoints_in_memory(sqlite_keyturn: Keyturn) -> None:
    """Every transaction is a savepoint of a shared one (group commit), and SQLite copies each
    page it first changes there to a statement journal: a temporary file by default, which cost
    half of a refresh's time in SQLite."""
    await _insert(sqlite_keyturn.database, 1)
    writer = sqlite_keyturn.database._group._driver  # type: ignore[union-attr]
    assert writer is not None
    assert writer.execute("PRAGMA temp_store").fetchone() == (2,)  # MEMORY


def _file_and_log_sizes(path: str) -> tuple[int, int]:
    return os.path.getsize(path), os.path.getsize(f"{path}-wal")


async def test_the_sqlite_writer_copies_its_log_into_the_file_later_than_sqlite_would(
    sqlite_keyturn: Keyturn,
) -> None:
    """A checkpoint runs inside the COMMIT that crosses the mark, and every write waits for it:
    the group writer lets the write-ahead log grow past SQLite's 1,000 pages first."""
    database = sqlite_keyturn.database
    path = _file(sqlite_keyturn)
    await _insert(database, 0)  # the writer's connection is open
    size, _ = _file_and_log_sizes(path)
    async with database.write() as conn:
        for index in range(1, 20_000):
            await _insert_user(conn, index)
    after, log = _file_and_log_sizes(path)
    frames = (log - 32) // (4096 + 24)  # the log's header, then a header and a page each
    assert 1_000 < frames < WRITER_CHECKPOINT_PAGES
    assert after == size  # nothing was copied into the database file yet
    assert await _exists(database, 19_999)


async def test_waiting_for_another_process_s_write_lock_leaves_the_event_loop_free(
    sqlite_keyturn: Keyturn,
) -> None:
    keyturn = sqlite_keyturn
    other = sqlite3.connect(_file(keyturn), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    counting = asyncio.create_task(ticker())
    writing = asyncio.create_task(_insert(keyturn.database, 5))
    started = time.perf_counter()
    await asyncio.sleep(0.3)
    assert not writing.done()  # still waiting for the lock ...
    other.execute("COMMIT")  # ... until the other writer lets go
    other.close()
    await writing
    counting.cancel()
    waited = time.perf_counter() - started
    assert await _exists(keyturn.database, 5)
    # The loop kept running while the write waited: about one tick per 10 ms of waiting.
    assert ticks >= int(waited / 0.01) // 2


async def test_after_postgresql_drops_every_connection_requests_carry_on(
    postgres_url: str, clock: FakeClock
) -> None:
    """A restart or failover kills idle connections; the next login's read, look-up and write
    transaction notice, open fresh ones, and answer as if nothing happened."""
    async with started(settings_for(postgres_url), clock) as keyturn, client_of(keyturn) as http:
        tokens = await register(http)
        credentials = {"email": "ada@example.com", "password": PASSWORD}
        # Logins at once leave several connections idle, all of which the restart kills.
        await asyncio.gather(*(http.post("/auth/login", json=credentials) for _ in range(4)))
        assert (await http.get("/me", headers=bearer(tokens))).status_code == 200
        admin = await asyncpg.connect(_asyncpg_dsn(postgres_admin_url() or ""))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                make_url(postgres_url).database,
            )
        finally:
            await admin.close()
        assert killed >= 1
        # Each login's user read takes a dead idle connection off the stack first.
        for _ in range(4):
            relogin = await http.post("/auth/login", json=credentials)
            assert relogin.status_code == 200, relogin.text
        assert (await http.get("/me", headers=bearer(tokens))).status_code == 200
        refreshed = await http.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text


async def test_a_point_read_waits_out_another_process_s_brief_lock_on_sqlite(
    tmp_path: Path,
) -> None:
    """The loop's reader gives up after 50 ms; a process that holds the file a little longer
    (opening or closing it, checkpointing) must not turn a login's user read into a 503."""
    path = tmp_path / "keyturn.db"
    url = f"sqlite+aiosqlite:///{path}"
    database = Database(url)
    await migrate.upgrade(database)
    await _insert(database, 7)
    await database.dispose()

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # readers of the file now get "database is locked"
    database = Database(url)
    try:
        reading = asyncio.create_task(
            database.point_read(
                lambda conn: user_store.get_user_by_email(conn, "writer7@example.com")
            )
        )
        await asyncio.sleep(0.3)
        assert not reading.done()
        holder.execute("COMMIT")
        holder.close()
        found = await asyncio.wait_for(reading, timeout=10)
        assert found is not None
        assert found.id == f"{7:032x}"
    finally:
        holder.close()
        await database.dispose()
