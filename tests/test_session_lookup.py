"""The per-request session look-up: every request gets its own session's answer, including when
PostgreSQL look-ups made in the same turn of the event loop share one query."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import httpx
import pytest

from keyturn import Keyturn
from keyturn.storage import sessions as session_store
from keyturn.storage.postgres import Connections
from tests.actions import bearer, register
from tests.clock import FakeClock
from tests.conftest import settings_for
from tests.databases import sqlite_file
from tests.instances import client_of, started


async def test_concurrent_requests_each_get_their_own_session_s_answer(
    keyturn: Keyturn, client: httpx.AsyncClient
) -> None:
    people = [await register(client, f"user{i}@example.com") for i in range(6)]
    for ended in people[4:]:
        assert (await client.post("/auth/logout", headers=bearer(ended))).status_code == 204
    order = [i % len(people) for i in range(36)]
    answers = await asyncio.gather(*(client.get("/me", headers=bearer(people[i])) for i in order))
    for i, answer in zip(order, answers, strict=True):
        if i >= 4:
            assert answer.status_code == 401
        else:
            assert answer.status_code == 200
            assert answer.json()["email"] == f"user{i}@example.com"


async def test_the_look_up_reads_the_same_session_and_user_as_the_store(
    keyturn: Keyturn, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.now = clock.now.replace(microsecond=654321)  # microseconds survive the trip
    tokens = await register(client, name="Ada")
    principal = await keyturn.sessions.authenticate(tokens["access_token"])
    async with keyturn.database.read() as conn:
        stored = await session_store.get_session_and_user(conn, principal.session.id)
    assert stored is not None
    assert await keyturn.sessions.lookup.find(principal.session.id) == stored
    assert stored[0].created_at == clock.now
    assert stored[0].created_at.tzinfo == UTC


async def test_get_me_answers_with_the_user_as_changed_since_the_last_answer(
    client: httpx.AsyncClient,
) -> None:
    tokens = await register(client, name="Ada")
    assert (await client.get("/me", headers=bearer(tokens))).json()["name"] == "Ada"
    assert (await client.get("/me", headers=bearer(tokens))).json()["name"] == "Ada"
    renamed = await client.patch("/me", headers=bearer(tokens), json={"name": "Countess"})
    assert renamed.status_code == 200
    assert (await client.get("/me", headers=bearer(tokens))).json()["name"] == "Countess"
    changed = await client.post(
        "/me/email", headers=bearer(tokens), json={"new_email": "countess@example.com"}
    )
    assert changed.status_code == 200, changed.text
    assert (await client.get("/me", headers=bearer(tokens))).json()["email"] == (
        "countess@example.com"
    )


class _CountingFetch:
    """The real `Connections.fetch`, counted (no stand-in: every query reaches PostgreSQL)."""

    def __init__(self, connections: Connections) -> None:
        self.real = connections.fetch
        self.batches: list[list[str]] = []

    async def __call__(self, query: str, *args: Any) -> list[Any]:
        self.batches.append(list(args[0]))
        return await self.real(query, *args)


@pytest.fixture
async def on_postgres(postgres_url: str, clock: FakeClock) -> AsyncIterator[Keyturn]:
    async with started(settings_for(postgres_url), clock) as instance:
        yield instance


async def _sessions(keyturn: Keyturn, count: int) -> list[str]:
    async with client_of(keyturn) as http:
        people = [await register(http, f"user{i}@example.com") for i in range(count)]
    return [(await keyturn.sessions.authenticate(p["access_token"])).session.id for p in people]


async def test_postgresql_look_ups_in_one_turn_of_the_loop_share_one_query(
    on_postgres: Keyturn, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _sessions(on_postgres, 5)
    connections = on_postgres.database.postgres
    assert connections is not None
    counting = _CountingFetch(connections)
    monkeypatch.setattr(connections, "fetch", counting)
    lookup = on_postgres.sessions.lookup
    found = await asyncio.gather(*(lookup.find(sid) for sid in [*ids, ids[0], "0" * 32]))
    assert len(counting.batches) == 1
    assert sorted(counting.batches[0]) == sorted({*ids, "0" * 32})
    assert [f[0].id if f else None for f in found] == [*ids, ids[0], None]


async def test_a_cancelled_look_up_leaves_those_that_joined_it_answered(
    on_postgres: Keyturn,
) -> None:
    ids = await _sessions(on_postgres, 4)
    lookup = on_postgres.sessions.lookup
    tasks = [asyncio.create_task(lookup.find(sid)) for sid in ids]
    await asyncio.sleep(0)  # all four have started: the first gathers, the others joined it
    tasks[0].cancel()
    found = await asyncio.wait_for(asyncio.gather(*tasks[1:]), timeout=10)  # never left waiting
    assert [f[0].id for f in found if f] == ids[1:]
    assert tasks[0].cancelled()


async def test_a_sqlite_look_up_sees_what_another_process_committed_since_its_last_read(
    sqlite_keyturn: Keyturn,
) -> None:
    """The look-up skips re-reading a session while nothing was committed. A commit by any
    connection, here a plain one as another process would hold, must end that at once."""
    async with client_of(sqlite_keyturn) as client:
        tokens = await register(client, name="Ada")
        for _ in range(3):  # read, then answered from what was read
            assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
        other = sqlite3.connect(sqlite_file(sqlite_keyturn.database.url))
        try:
            other.execute("UPDATE sessions SET revoked_at = ?", ("2026-01-01 00:00:00.000000",))
            other.commit()
        finally:
            other.close()
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 401


async def test_the_sqlite_commit_mark_moves_with_every_commit_and_only_then(
    sqlite_keyturn: Keyturn,
) -> None:
    database = sqlite_keyturn.database
    database.commit_mark()  # the first call opens the WAL index
    mark = database.commit_mark()
    assert isinstance(mark, bytes)  # read from the WAL index, not with a read transaction
    assert database.commit_mark() == mark
    async with client_of(sqlite_keyturn) as client:
        await register(client)  # a commit through keyturn's own writer
    moved = database.commit_mark()
    assert moved != mark
    other = sqlite3.connect(sqlite_file(database.url))
    try:
        other.execute("UPDATE users SET name = 'Grace'")
        other.commit()
    finally:
        other.close()
    assert database.commit_mark() not in (mark, moved)
