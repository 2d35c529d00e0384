"""Audit appends: events/s with one writer and with many, and what one append adds to a login.

Uses keyturn's own code (`Database`, `storage.audit.append_events`) on the run's database, after
the server has stopped, so the figures are the append path alone.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.context import Context
from bench.databases import TempDatabase
from keyturn.security import opaque_tokens
from keyturn.services.audit import EventType, event
from keyturn.services.context import ClientInfo
from keyturn.storage import audit as audit_store
from keyturn.storage import sessions as session_store
from keyturn.storage.database import Database

CLIENT = ClientInfo(ip="127.0.0.1", user_agent="bench")


@dataclass(frozen=True, slots=True)
class AuditRate:
    one_writer_per_second: float
    many_writers_per_second: float
    writers: int
    login_write_ms: float  # median login-shaped write transaction: session, token and event
    login_write_without_audit_ms: float  # the same transaction without the event
    chain_intact: bool
    verify_output: str

    @property
    def append_ms(self) -> float:
        """What the event adds to a login's write transaction."""
        return max(0.0, self.login_write_ms - self.login_write_without_audit_ms)


async def _append_loop(database: Database, user_id: str, deadline: float) -> int:
    appended = 0
    while time.perf_counter() < deadline:
        async with database.write() as conn:
            await audit_store.append_events(
                conn,
                [
                    event(
                        EventType.LOGIN_SUCCEEDED,
                        now=datetime.now(UTC),
                        client=CLIENT,
                        user_id=user_id,
                        session_id=None,
                    )
                ],
            )
        appended += 1
    return appended


async def _rate(database: Database, user_id: str, writers: int, seconds: float) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(_append_loop(database, user_id, started + seconds) for _ in range(writers))
    )
    return sum(counts) / (time.perf_counter() - started)


async def _login_writes(
    database: Database, user_id: str, count: int, *, audit: bool
) -> list[float]:
    """Milliseconds of each of `count` transactions shaped like a login's write (as SQLite's
    login writes; PostgreSQL's writes the same rows in one statement)."""
    durations: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        now = datetime.now(UTC)
        session = session_store.new_session(
            user_id=user_id,
            rotation_key=secrets.token_bytes(32),
            now=now,
            expires_at=now + timedelta(days=1),
            ends_at=now + timedelta(hours=1),
            ip=CLIENT.ip,
            user_agent=CLIENT.user_agent,
        )
        async with database.write() as conn:
            await session_store.insert_session(
                conn, session, opaque_tokens.hash_token(opaque_tokens.new_token())
            )
            if audit:
                await audit_store.append_events(
                    conn,
                    [
                        event(
                            EventType.LOGIN_SUCCEEDED,
                            now=now,
                            client=CLIENT,
                            user_id=user_id,
                            session_id=session.id,
                        )
                    ],
                )
        durations.append((time.perf_counter() - started) * 1000)
    return durations


async def _measure(url: str, writers: int, seconds: float) -> tuple[float, float, float, float]:
    database = Database(url)
    try:
        async with database.read() as conn:
            user_id = str((await conn.exec_driver_sql("SELECT id FROM users LIMIT 1")).scalar())
        one = await _rate(database, user_id, 1, seconds)
        many = await _rate(database, user_id, writers, seconds)
        # Short alternating batches, so drift in the machine's load hits both alike, and
        # medians, so a transaction that waited for a busy core does not skew either.
        with_audit: list[float] = []
        without: list[float] = []
        deadline = time.perf_counter() + 2 * seconds
        while time.perf_counter() < deadline or len(without) < 40:
            without += await _login_writes(database, user_id, 20, audit=False)
            with_audit += await _login_writes(database, user_id, 20, audit=True)
        return one, many, statistics.median(with_audit), statistics.median(without)
    finally:
        await database.dispose()


def measure(ctx: Context, database: TempDatabase, env: dict[str, str]) -> AuditRate:
    plan = ctx.plan
    one, many, with_audit, without = asyncio.run(
        _measure(database.url, plan.audit_writers, plan.audit_seconds)
    )
    verify = subprocess.run(
        [ctx.keyturn_bin, "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ctx.workdir,
        timeout=600,
    )
    rate = AuditRate(
        one_writer_per_second=one,
        many_writers_per_second=many,
        writers=plan.audit_writers,
        login_write_ms=with_audit,
        login_write_without_audit_ms=without,
        chain_intact=verify.returncode == 0,
        verify_output=(verify.stdout + verify.stderr).strip()[-1000:],
    )
    print(
        f"  audit append: {one:.0f}/s one writer, {many:.0f}/s {plan.audit_writers} writers; "
        f"+{rate.append_ms:.2f} ms on a login's write ({without:.2f} → {with_audit:.2f} ms); "
        f"audit verify: {'intact' if rate.chain_intact else 'BROKEN'}",
        flush=True,
    )
    return rate
