"""The refresh statement's plan on PostgreSQL: every row it reads or writes is found by key.

A new database has no statistics, and PostgreSQL plans from the tables' sizes alone: a small
table is scanned whole. Written as joins, the rotation was planned from the users side and
walked every session; a prepared statement keeps its plan as the tables grow, so under load
each refresh read more pages than the one before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from keyturn.storage import sessions as session_store
from tests.clock import FakeClock
from tests.conftest import settings_for
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


async def test_a_batch_of_refreshes_finds_every_row_by_key_on_postgresql(
    postgres_url: str, clock: FakeClock
) -> None:
    """The plan that counts is the cached, generic one: made once per connection while the
    tables are small, and kept as they grow."""
    async with started(settings_for(postgres_url), clock) as keyturn:
        connections = keyturn.database.postgres
        assert connections is not None

        async def explain(raw: asyncpg.Connection) -> str:
            await _seed(raw, datetime.now(UTC))
            async with raw.transaction():
                await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await raw.execute(
                    "PREPARE rotate_many (varchar[], timestamptz[], timestamptz[], varchar[],"
                    " varchar[], varchar[], varchar[], varchar[], varchar[], text[]) AS "
                    + session_store._ROTATE_MANY
                )
                try:
                    return str(
                        await raw.fetchval(
                            "EXPLAIN (FORMAT JSON) EXECUTE rotate_many(ARRAY['hash-150'],"
                            " ARRAY[now()], ARRAY[now()], ARRAY['n'], ARRAY['s'], ARRAY['e'],"
                            " ARRAY['session.refreshed'], ARRAY[NULL], ARRAY[NULL], ARRAY['{}'])"
                        )
                    )
                finally:
                    await raw.execute("DEALLOCATE rotate_many")

        explained = await connections.run(explain)
    plan = json.loads(explained)[0]["Plan"]
    scans = [
        (node["Node Type"], node["Relation Name"])
        for node in _nodes(plan)
        if node.get("Relation Name") in ("sessions", "refresh_tokens", "users")
        and "Scan" in node["Node Type"]
    ]
    assert {relation for _, relation in scans} == {"sessions", "refresh_tokens", "users"}
    assert all(kind == "Index Scan" for kind, _ in scans), scans
