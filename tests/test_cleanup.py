"""Cleanup removes ended sessions and their refresh tokens, never a live one: the `keyturn cleanup`
command, the periodic task inside a real server, batches, and one runner across instances."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import select

from keyturn import Keyturn, Settings
from keyturn.storage.database import Database
from keyturn.storage.schema import refresh_tokens, sessions
from keyturn.storage.sessions import Purged
from keyturn.tasks import purge_ended_sessions
from keyturn.web.app import create_app
from tests.actions import bearer, login, register
from tests.clock import FakeClock
from tests.instances import settings_from_env, started
from tests.server_process import KEYTURN, running_server, server_env

IDLE_TTL = 600
MAX_TTL = 1800
# What `populate` leaves behind for cleanup: three ended sessions holding eight refresh tokens.
ENDED_SESSIONS, ENDED_TOKENS = 3, 8


def short_ttl_settings(database_url: str) -> Settings:
    return settings_from_env(
        database_url, KEYTURN_SESSION_IDLE_TTL=str(IDLE_TTL), KEYTURN_SESSION_MAX_TTL=str(MAX_TTL)
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return short_ttl_settings(database_url)


@dataclass(frozen=True)
class Population:
    live: dict[str, dict[str, Any]]  # session id -> its latest tokens
    tokens_of_live: Counter[str]


async def refreshed(client: AsyncClient, tokens: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def populate(client: AsyncClient, clock: FakeClock) -> Population:
    """Sessions in every state; the clock ends where it started (now)."""
    clock.advance(-(MAX_TTL + 50))
    # Idle since then: three tokens.
    await refreshed(client, await refreshed(client, await register(client)))
    capped = await login(client)
    for _ in range(3):  # used every 500 s, so never idle: it ends by the absolute limit
        clock.advance(500)
        capped = await refreshed(client, capped)  # 4 tokens in all
    clock.advance(350)
    live = await refreshed(client, await login(client))  # 2 tokens
    revoked = await login(client)  # 1 token
    assert (await client.post("/auth/logout", headers=bearer(revoked))).status_code == 204
    other_user = await register(client, email="bob@example.com")  # 1 token

    listed = await client.get("/me/sessions", headers=bearer(live))
    assert {s["id"] for s in listed.json()["sessions"]} == {live["session_id"]}
    return Population(
        live={t["session_id"]: t for t in (live, other_user)},
        tokens_of_live=Counter({live["session_id"]: 2, other_user["session_id"]: 1}),
    )


async def stored(database: Database) -> tuple[set[str], Counter[str]]:
    """Session ids in the database, and how many refresh tokens each session has."""
    async with database.read() as conn:
        session_ids = {row[0] for row in await conn.execute(select(sessions.c.id))}
        tokens = Counter(row[0] for row in await conn.execute(select(refresh_tokens.c.session_id)))
    assert set(tokens) <= session_ids, "refresh tokens outlived their session"
    return session_ids, tokens


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_cleanup_command(database_url: str) -> Finished:
    process = await asyncio.create_subprocess_exec(
        KEYTURN,
        "cleanup",
        env=server_env(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


@asynccontextmanager
async def serving(env: Mapping[str, str], logs: Path) -> AsyncIterator[str]:
    """`running_server`, started and stopped off the event loop."""
    server = running_server(env, cwd=logs)
    base = await asyncio.to_thread(server.__enter__)
    try:
        yield base
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


async def test_cleanup_command_removes_ended_sessions_with_their_tokens_and_no_live_one(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn, database_url: str
) -> None:
    population = await populate(client, clock)
    before, _ = await stored(keyturn.database)
    assert len(before) == len(population.live) + ENDED_SESSIONS

    done = await run_cleanup_command(database_url)
    assert done.returncode == 0, done.stderr
    expected = f"removed {ENDED_SESSIONS} sessions and {ENDED_TOKENS} refresh tokens"
    assert done.stdout.strip().splitlines()[-1] == expected
    assert await stored(keyturn.database) == (set(population.live), population.tokens_of_live)

    for tokens in population.live.values():
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
        await refreshed(client, tokens)


async def test_the_cleanup_command_leaves_the_web_stack_unimported(database_url: str) -> None:
    """Cron runs it beside a busy server: importing FastAPI and the services would be most of
    its start-up CPU, for nothing it uses."""
    script = (
        "import sys, keyturn.cli as cli\n"
        "code = cli.main(['cleanup'])\n"
        "loaded = [m for m in ('fastapi', 'starlette', 'keyturn.facade', 'keyturn.web',"
        " 'keyturn.services') if m in sys.modules]\n"
        "print('loaded:', loaded)\n"
        "raise SystemExit(code)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env=server_env(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert lines[0] == "removed 0 sessions and 0 refresh tokens"
    assert lines[-1] == "loaded: []"


async def test_cleanup_runs_in_bounded_batches_and_reports_progress(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn
) -> None:
    population = await populate(client, clock)
    progress: list[tuple[int, int]] = []
    result = await purge_ended_sessions(
        keyturn.database,
        keyturn.sessions.purge_batch,
        batch_size=2,
        on_progress=lambda s, t: progress.append((s, t)),
    )
    assert result == (ENDED_SESSIONS, ENDED_TOKENS)
    assert [sessions_so_far for sessions_so_far, _ in progress] == [2, 3]
    assert progress[-1] == (ENDED_SESSIONS, ENDED_TOKENS)
    assert (await stored(keyturn.database))[0] == set(population.live)


async def test_cleanup_rests_between_batches_in_proportion_to_their_work(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn
) -> None:
    await populate(client, clock)
    worked: list[float] = []

    async def slow_batch(size: int) -> Purged:
        started = time.perf_counter()
        await asyncio.sleep(0.05)  # a batch that takes the database 50 ms
        removed = await keyturn.sessions.purge_batch(size)
        worked.append(time.perf_counter() - started)
        return removed

    started = time.perf_counter()
    result = await purge_ended_sessions(keyturn.database, slow_batch, batch_size=1, rest=0.5)
    elapsed = time.perf_counter() - started
    assert result == (ENDED_SESSIONS, ENDED_TOKENS)
    # After every batch but the last (which found fewer than a full batch), half its time again.
    assert elapsed >= sum(worked) + 0.5 * sum(worked[:-1])


@pytest.fixture
async def second_instance(settings: Settings, clock: FakeClock) -> AsyncIterator[Keyturn]:
    async with started(settings, clock) as instance:
        yield instance


async def test_concurrent_cleanups_remove_each_ended_session_once(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn, second_instance: Keyturn
) -> None:
    population = await populate(client, clock)
    results = await asyncio.gather(keyturn.cleanup(), second_instance.cleanup())
    done = [r for r in results if r is not None]
    assert done, "nobody cleaned up"
    assert tuple(map(sum, zip(*done, strict=True))) == (ENDED_SESSIONS, ENDED_TOKENS)
    assert await stored(keyturn.database) == (set(population.live), population.tokens_of_live)


async def test_only_one_instance_cleans_up_at_a_time_on_postgresql(postgres_url: str) -> None:
    settings = short_ttl_settings(postgres_url)
    clock = FakeClock()
    runner, bystander = Keyturn(settings, clock=clock), Keyturn(settings, clock=clock)
    await runner.start(background=False)
    await bystander.start(background=False)
    try:
        transport = httpx.ASGITransport(app=create_app(runner))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            population = await populate(http, clock)
        in_first_batch, release = asyncio.Event(), asyncio.Event()

        async def held_batch(size: int) -> Purged:
            removed = await runner.sessions.purge_batch(size)
            in_first_batch.set()
            await release.wait()
            return removed

        running = asyncio.create_task(
            purge_ended_sessions(runner.database, held_batch, batch_size=1)
        )
        await asyncio.wait_for(in_first_batch.wait(), timeout=10)
        # While it holds the lock, other instances and the command step aside untouched.
        assert await bystander.cleanup() is None
        command = await run_cleanup_command(postgres_url)
        assert command.returncode == 0, command.stderr
        assert "another instance is cleaning up" in command.stdout
        remaining, _ = await stored(runner.database)
        assert len(remaining) == len(population.live) + ENDED_SESSIONS - 1

        release.set()
        assert await asyncio.wait_for(running, timeout=10) == (ENDED_SESSIONS, ENDED_TOKENS)
        assert await bystander.cleanup() == (0, 0)  # the lock is free again
        assert await stored(runner.database) == (set(population.live), population.tokens_of_live)
    finally:
        await bystander.stop()
        await runner.stop()


async def test_the_server_purges_ended_sessions_every_cleanup_interval(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn, database_url: str, tmp_path: Path
) -> None:
    population = await populate(client, clock)
    env = server_env(
        database_url, KEYTURN_CLEANUP_INTERVAL="1", KEYTURN_ISSUER=keyturn.settings.issuer
    )
    async with serving(env, tmp_path) as base:
        deadline = time.monotonic() + 15
        while (await stored(keyturn.database))[0] != set(population.live):
            assert time.monotonic() < deadline, "the server did not clean up within 15 s"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # at least one more run: a live session is never taken
        assert await stored(keyturn.database) == (set(population.live), population.tokens_of_live)
        async with httpx.AsyncClient(base_url=base) as http:
            for tokens in population.live.values():
                assert (await http.get("/me", headers=bearer(tokens))).status_code == 200
                response = await http.post(
                    "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                )
                assert response.status_code == 200, response.text


async def test_a_session_refreshed_past_its_first_idle_end_is_not_removed_until_it_ends(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn
) -> None:
    """Refreshes move a session's end on without touching what cleanup looks it up by: cleanup
    finds it due, sees it live, and looks again at its new end."""
    tokens = await register(client)
    clock.advance(IDLE_TTL - 100)
    tokens = await refreshed(client, tokens)  # now ends IDLE_TTL from here
    clock.advance(200)  # past the end it had when it was created
    assert await keyturn.cleanup() == (0, 0)
    assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
    tokens = await refreshed(client, tokens)
    clock.advance(IDLE_TTL + 1)  # idle since the last refresh
    assert await keyturn.cleanup() == (1, 3)
    assert await stored(keyturn.database) == (set(), Counter())


async def test_a_lower_idle_ttl_brings_cleanup_forward_for_sessions_refreshed_under_it(
    client: AsyncClient, clock: FakeClock, keyturn: Keyturn, database_url: str
) -> None:
    tokens = await register(client)  # due for cleanup IDLE_TTL from now
    shorter = settings_from_env(
        database_url, KEYTURN_SESSION_IDLE_TTL="100", KEYTURN_SESSION_MAX_TTL=str(MAX_TTL)
    )
    async with started(shorter, clock) as restarted:
        transport = httpx.ASGITransport(app=create_app(restarted))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            await refreshed(http, tokens)  # now ends in 100 s
        clock.advance(101)
        assert await restarted.cleanup() == (1, 2)
