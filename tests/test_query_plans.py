"""The refresh statement's plan on PostgreSQL: every row it reads or writes is found by key.

A new database has no statistics, and PostgreSQL plans from the tables' sizes alone. Written
as joins, the rotation was planned from the users side and walked every session on every
refresh; the cost grew with the tables (and with their dead row versions) under load.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from keyturn.storage import sessions as session_store
from keyturn.storage.audit import encode_detail
from keyturn.storage.driver import POSTGRESQL, _plan
from tests.clock import FakeClock
from tests.conftest import settings_for
from tests.databases import _asyncpg_dsn
from tests.instances import started

USERS = 300


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def _seed(conn: asyncpg.Connection, now: datetime) -> None:
    """USERS users with one live session and one live refresh token each (plain SQL: argon2
    for 300 registrations would be most of the test)."""
    await conn.execute(
        """
        INSERT INTO users (id, email, name, password_hash, email_verified, is_admin,
                           is_disabled, created_at, updated_at, deleted_at)
        SELECT lpad(to_hex(n), 32, 'u'), 'u' || n || '@example.com', NULL, 'x', false, false,
               false, $1, $1, NULL
        FROM generate_series(1, $2) AS n
        """,
        now,
        USERS,
    )
    await conn.execute(
        """
        INSERT INTO sessions (id, user_id, rotation_key, created_at, authenticated_at,
                              last_seen_at, expires_at, ends_at, purge_after)
        SELECT lpad(to_hex(n), 32, 's'), lpad(to_hex(n), 32, 'u'), '\\x00', $1, $1, $1,
               $2, $2, $2
        FROM generate_series(1, $3) AS n
        """,
        now,
        now + timedelta(days=1),
        USERS,
    )
    await conn.execute(
        """
        INSERT INTO refresh_tokens (id, session_id, token_hash, generation, created_at)
        SELECT lpad(to_hex(n), 32, 't'), lpad(to_hex(n), 32, 's'), 'hash-' || n, 0, $1
        FROM generate_series(1, $2) AS n
        """,
        now,
        USERS,
    )


async def test_a_refresh_finds_every_row_by_key_on_postgresql(
    postgres_url: str, clock: FakeClock
) -> None:
    async with started(settings_for(postgres_url), clock):
        pass  # migrated: the tables exist, empty and without statistics
    now = datetime.now(UTC)
    parameters = {
        "b_hash": f"hash-{USERS // 2}",
        "b_now": now,
        "b_new_id": "n" * 32,
        "b_new_hash": "successor",
        "b_idle_ends_at": now + timedelta(hours=1),
        "e_id": "e" * 32,
        "e_type": "session.refreshed",
        "e_ip": None,
        "e_user_agent": None,
        "e_detail": encode_detail({}),
    }
    plan = _plan(session_store._ROTATE, parameters, POSTGRESQL)
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await _seed(conn, now)
        explained = await conn.fetchval("EXPLAIN (FORMAT JSON) " + plan.sql, *plan.args(parameters))
    finally:
        await conn.close()
    scans = [
        (node["Node Type"], node["Relation Name"])
        for node in _nodes(json.loads(explained)[0]["Plan"])
        if node.get("Relation Name") in ("sessions", "refresh_tokens")
        and "Scan" in node["Node Type"]
    ]
    assert {relation for _, relation in scans} == {"sessions", "refresh_tokens"}
    assert all(kind == "Index Scan" for kind, _ in scans), scans
