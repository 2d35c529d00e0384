"""Refresh races and cross-instance revocation, with real concurrency: many connections inside
one process, and real `keyturn serve` processes sharing one database."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from httpx import AsyncClient
from sqlalchemy import select

from keyturn import Keyturn, Settings
from keyturn.storage.schema import refresh_tokens
from tests.actions import PASSWORD, bearer, register
from tests.server_process import running_server, server_env

RACERS = 16


def short_ttls(**extra: str) -> dict[str, str]:
    """Short TTLs, and one issuer: instances behind one name accept each other's tokens."""
    return {
        "KEYTURN_ISSUER": "http://keyturn.test",
        "KEYTURN_SESSION_IDLE_TTL": "300",
        "KEYTURN_SESSION_MAX_TTL": "600",
        "KEYTURN_ACCESS_TOKEN_TTL": "300",
        "KEYTURN_REFRESH_REUSE_GRACE": "10",
        **extra,
    }


async def prepare(database_url: str) -> None:
    """Migrate and create the signing key once, so that both servers can start side by side."""
    instance = Keyturn(Settings(database_url=database_url))
    await instance.start(background=False)
    await instance.stop()


@contextmanager
def two_servers(env: Mapping[str, str], logs: Path) -> Iterator[tuple[str, str]]:
    """Two `keyturn serve` processes on one database: two instances behind a balancer."""
    asyncio.run(prepare(env["KEYTURN_DATABASE_URL"]))
    servers = [running_server(env, cwd=logs) for _ in range(2)]
    with ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        starts = [pool.submit(server.__enter__) for server in servers]
        for server, start in zip(servers, starts, strict=True):
            if start.exception() is None:  # waits; a started one is stopped whatever happens
                stack.push(server.__exit__)
        first, second = (start.result() for start in starts)
        yield first, second


def race(urls: list[str], body: dict[str, str]) -> list[httpx.Response]:
    """POST `body` to every URL at once, each from its own thread and TCP connection."""
    barrier = threading.Barrier(len(urls))

    def one(url: str) -> httpx.Response:
        with httpx.Client(timeout=30) as http:
            http.get(url.rsplit("/auth/", 1)[0] + "/healthz")  # connect before the start line
            barrier.wait()
            return http.post(url, json=body)

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(one, urls))


def event_types(base: str, tokens: dict[str, Any]) -> list[str]:
    response = httpx.get(f"{base}/me/audit", params={"limit": 200}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return [e["type"] for e in response.json()["events"]]


def signed_up(base: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/auth/register", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def logged_in(base: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def me_status(base: str, tokens: dict[str, Any]) -> int:
    return httpx.get(f"{base}/me", headers=bearer(tokens)).status_code


async def test_concurrent_refreshes_in_one_process_yield_exactly_one_successor(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    tokens = await register(client)
    body = {"refresh_token": tokens["refresh_token"]}
    responses = await asyncio.gather(
        *(client.post("/auth/refresh", json=body) for _ in range(RACERS))
    )
    assert [r.status_code for r in responses] == [200] * RACERS, [r.text for r in responses]
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1
    assert {r.json()["session_id"] for r in responses} == {tokens["session_id"]}

    async with keyturn.database.read() as conn:
        generations = sorted(
            row[0]
            for row in await conn.execute(
                select(refresh_tokens.c.generation).where(
                    refresh_tokens.c.session_id == tokens["session_id"]
                )
            )
        )
    assert generations == [0, 1]
    (successor,) = successors
    audit = await client.get("/me/audit", params={"limit": 200}, headers=bearer(tokens))
    assert [e["type"] for e in audit.json()["events"]].count("session.refreshed") == 1
    after = await client.post("/auth/refresh", json={"refresh_token": successor})
    assert after.status_code == 200
    assert after.json()["refresh_token"] != successor


def test_concurrent_refreshes_across_two_server_processes_yield_exactly_one_successor(
    database_url: str, tmp_path: Path
) -> None:
    with two_servers(server_env(database_url, **short_ttls()), tmp_path) as (first, second):
        tokens = signed_up(first)
        urls = [f"{(first, second)[i % 2]}/auth/refresh" for i in range(RACERS)]
        responses = race(urls, {"refresh_token": tokens["refresh_token"]})

        failures = [(r.status_code, r.text) for r in responses if r.status_code != 200]
        # SQLite: two processes contend for its one write lock, and nobody hears about it.
        assert not any("locked" in text.lower() for _, text in failures), failures
        assert not failures, failures
        successors = {r.json()["refresh_token"] for r in responses}
        assert len(successors) == 1
        (successor,) = successors
        winner = responses[0].json()
        assert event_types(second, winner).count("session.refreshed") == 1
        after = httpx.post(f"{second}/auth/refresh", json={"refresh_token": successor})
        assert after.status_code == 200, after.text
        assert me_status(first, after.json()) == 200


def test_revocations_through_one_instance_are_refused_at_once_by_the_other(
    database_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL, two instances; on SQLite, two processes on one file, where each
    process's look-up answers from what it last read until anything is committed."""
    env = server_env(database_url, **short_ttls(KEYTURN_REFRESH_REUSE_GRACE="1"))
    with two_servers(env, tmp_path) as (a, b):
        logged_out = signed_up(a)
        deleted, revoked, stolen = logged_in(b), logged_in(a), logged_in(a)
        for _ in range(3):  # on SQLite, b answers from what it read while nothing is committed
            assert me_status(b, logged_out) == 200

        assert httpx.post(f"{a}/auth/logout", headers=bearer(logged_out)).status_code == 204
        assert me_status(b, logged_out) == 401
        refused = httpx.post(
            f"{b}/auth/refresh", json={"refresh_token": logged_out["refresh_token"]}
        )
        assert refused.status_code == 401

        gone = httpx.delete(f"{b}/me/sessions/{deleted['session_id']}", headers=bearer(revoked))
        assert gone.status_code == 204
        assert me_status(a, deleted) == 401

        assert httpx.post(f"{b}/auth/revoke", data={"token": revoked["refresh_token"]}).is_success
        assert me_status(a, revoked) == 401

        # A thief presenting a rotated token to the other instance ends the session there too.
        rotated = httpx.post(f"{a}/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
        assert rotated.status_code == 200
        time.sleep(1.2)  # past KEYTURN_REFRESH_REUSE_GRACE=1
        reused = httpx.post(f"{b}/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
        assert reused.status_code == 401
        assert reused.json()["code"] == "refresh_token_reused"
        assert me_status(a, rotated.json()) == 401
