"""Periodic work inside the server: purge ended sessions, reload signing keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from keyturn.errors import Unavailable
from keyturn.storage.database import Database

log = logging.getLogger("keyturn.tasks")

_CLEANUP_LOCK = 0x6B74_636C6E  # PostgreSQL advisory lock: one cleanup runner across instances
BATCH_SIZE = 1000


async def purge_ended_sessions(
    database: Database,
    purge_batch: Callable[[int], Awaitable[tuple[int, int]]],
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    pause: float = 0.0,
) -> tuple[int, int] | None:
    """Delete ended sessions in short batches; None when another instance is already at it.

    Each batch is its own transaction, so no request waits on more than one batch; `pause`
    yields between batches so a long cleanup leaves room for requests (SQLite's one writer).
    """
    async with _single_runner(database) as is_runner:
        if not is_runner:
            return None
        sessions_total = tokens_total = 0
        while True:
            sessions_removed, tokens_removed = await purge_batch(batch_size)
            sessions_total += sessions_removed
            tokens_total += tokens_removed
            if on_progress is not None:
                on_progress(sessions_total, tokens_total)
            if sessions_removed < batch_size:
                return sessions_total, tokens_total
            await asyncio.sleep(pause)


@asynccontextmanager
async def _single_runner(database: Database) -> AsyncIterator[bool]:
    """On PostgreSQL, a session-level advisory lock makes one instance the runner; SQLite's
    single writer already serializes the batches, so there every caller may run."""
    if database.dialect != "postgresql":
        yield True
        return
    async with database.connect() as lock_conn:
        statement = f"SELECT pg_try_advisory_lock({_CLEANUP_LOCK})"
        got = bool((await lock_conn.exec_driver_sql(statement)).scalar())
        await lock_conn.commit()
        try:
            yield got
        finally:
            if got:
                await lock_conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_CLEANUP_LOCK})")
                await lock_conn.commit()


async def run_every(interval: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `job` every `interval` seconds until cancelled; a failure is logged, never fatal."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Unavailable:
            log.warning("%s skipped: database unavailable", name)
        except Exception:
            log.exception("%s failed", name)
