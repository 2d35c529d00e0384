"""Abuse limits: per-email login throttling, per-IP rate limits, trusted proxies, shared Redis."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.engine import make_url

from keyturn import Keyturn, Settings
from keyturn.config import TEST_ARGON2
from keyturn.web.app import create_app
from tests.actions import PASSWORD, bearer, login, register
from tests.clock import FakeClock
from tests.instances import started
from tests.server_process import free_port, running_server, server_env

PEER = "203.0.113.7"
PROXY = "192.0.2.10"
REDIS_TEST_DB = 13  # not the 0 other suites use: this file flushes its database


@asynccontextmanager
async def running(settings: Settings, **overrides: Any) -> AsyncIterator[Keyturn]:
    async with started(settings.with_overrides(**overrides), FakeClock()) as instance:
        yield instance


@asynccontextmanager
async def http(keyturn: Keyturn, peer: str = PEER) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose socket peer address, as keyturn sees it, is `peer`."""
    transport = httpx.ASGITransport(app=create_app(keyturn), client=(peer, 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """For limits that do not involve the database: SQLite only, to keep the suite quick."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}",
        argon2=TEST_ARGON2,
        rate_limit=None,
        cleanup_interval=0,
        issuer="http://testserver",
        cookie_secure=False,
    )


WRONG_PASSWORD = "not the password"


def attempt(client: httpx.AsyncClient, email: str, password: str = WRONG_PASSWORD) -> Any:
    return client.post("/auth/login", json={"email": email, "password": password})


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


def assert_throttled(response: httpx.Response, code: str, window: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert 1 <= int(response.headers["retry-after"]) <= window
    assert "access_token" not in response.text


# --- per-email login throttling -----------------------------------------------------------


async def test_login_failures_throttle_the_email_even_for_the_right_password(
    settings: Settings,
) -> None:
    async with running(settings, login_failure_limit=3, login_failure_window=60) as keyturn:
        async with http(keyturn) as client:
            await register(client)
            await register(client, "grace@example.com")
            for _ in range(3):
                assert (await attempt(client, "ada@example.com")).status_code == 401
            assert_throttled(await attempt(client, "ada@example.com"), "too_many_attempts", 60)
            right = await attempt(client, "ada@example.com", PASSWORD)
            assert_throttled(right, "too_many_attempts", 60)
            # However the address is spelled.
            assert_throttled(await attempt(client, " ADA@Example.com"), "too_many_attempts", 60)
            grant = await client.post(
                "/auth/token",
                data={
                    "grant_type": "password",
                    "username": "ada@example.com",
                    "password": PASSWORD,
                },
            )
            assert grant.status_code == 429
            # Another account is not affected.
            await login(client, "grace@example.com")
        # The count belongs to the email, not to the address the attempts came from.
        async with http(keyturn, peer="198.51.100.99") as elsewhere:
            assert_throttled(
                await attempt(elsewhere, "ada@example.com", PASSWORD), "too_many_attempts", 60
            )


async def test_throttling_answers_alike_for_existing_and_unknown_emails(
    settings: Settings,
) -> None:
    async with (
        running(settings, login_failure_limit=3, login_failure_window=60) as keyturn,
        http(keyturn) as client,
    ):
        await register(client)
        for step in range(5):
            known = await attempt(client, "ada@example.com")
            unknown = await attempt(client, "nobody@example.com")
            assert known.status_code == unknown.status_code == (401 if step < 3 else 429)
            assert without_request_id(known.json()) == without_request_id(unknown.json())
            assert known.headers.keys() - {"retry-after"} == unknown.headers.keys() - {
                "retry-after"
            }
            if step >= 3:
                skew = int(known.headers["retry-after"]) - int(unknown.headers["retry-after"])
                assert abs(skew) <= 1


async def test_a_successful_login_clears_the_failure_count(settings: Settings) -> None:
    async with (
        running(settings, login_failure_limit=3, login_failure_window=60) as keyturn,
        http(keyturn) as client,
    ):
        await register(client)
        for _ in range(2):
            assert (await attempt(client, "ada@example.com")).status_code == 401
        await login(client)
        for _ in range(3):
            assert (await attempt(client, "ada@example.com")).status_code == 401
        assert (await attempt(client, "ada@example.com", PASSWORD)).status_code == 429


async def test_the_throttle_lifts_when_the_window_has_passed(sqlite_settings: Settings) -> None:
    async with (
        running(sqlite_settings, login_failure_limit=2, login_failure_window=2) as keyturn,
        http(keyturn) as client,
    ):
        await register(client)
        for _ in range(2):
            assert (await attempt(client, "ada@example.com")).status_code == 401
        throttled = await attempt(client, "ada@example.com", PASSWORD)
        assert_throttled(throttled, "too_many_attempts", 2)
        # Retry-After is when the oldest failure leaves the (moving, real-time) window.
        await asyncio.sleep(int(throttled.headers["retry-after"]) + 0.1)
        await login(client)


# --- per-IP rate limits -------------------------------------------------------------------


async def test_every_action_has_its_own_per_ip_budget(sqlite_settings: Settings) -> None:
    async with running(sqlite_settings, rate_limit="3/minute") as keyturn:
        async with http(keyturn) as client:
            for i in range(3):
                tokens = await register(client, f"user{i}@example.com")
            refused = await client.post(
                "/auth/register", json={"email": "late@example.com", "password": PASSWORD}
            )
            assert_throttled(refused, "rate_limited", 60)

            for _ in range(3):
                await login(client, "user0@example.com")
            assert_throttled(
                await attempt(client, "user0@example.com", PASSWORD), "rate_limited", 60
            )

            grant = {
                "grant_type": "password",
                "username": "user1@example.com",
                "password": PASSWORD,
            }
            for _ in range(3):
                assert (await client.post("/auth/token", data=grant)).status_code == 200
            assert_throttled(await client.post("/auth/token", data=grant), "rate_limited", 60)

            refresh_token = tokens["refresh_token"]
            for _ in range(3):
                refreshed = await client.post(
                    "/auth/refresh", json={"refresh_token": refresh_token}
                )
                assert refreshed.status_code == 200
                tokens = refreshed.json()
                refresh_token = tokens["refresh_token"]
            over = await client.post("/auth/refresh", json={"refresh_token": refresh_token})
            assert_throttled(over, "rate_limited", 60)

            for _ in range(3):
                again = await client.post(
                    "/auth/reauthenticate", headers=bearer(tokens), json={"password": PASSWORD}
                )
                assert again.status_code == 204
            too_many = await client.post(
                "/auth/reauthenticate", headers=bearer(tokens), json={"password": PASSWORD}
            )
            assert_throttled(too_many, "rate_limited", 60)

            # Routes without a budget of their own are not limited.
            for _ in range(5):
                assert (await client.get("/me", headers=bearer(tokens))).status_code == 200

        # The budget is per client address.
        async with http(keyturn, peer="198.51.100.99") as other:
            await login(other, "user0@example.com")
            await register(other, "late@example.com")


async def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(
    sqlite_settings: Settings,
) -> None:
    async with (
        running(sqlite_settings, rate_limit="2/minute") as keyturn,
        http(keyturn) as client,
    ):
        tokens = await register(client)
        for i in range(2):
            forged = {"X-Forwarded-For": f"198.51.100.{i + 1}"}
            ok = await client.post(
                "/auth/login",
                headers=forged,
                json={"email": "ada@example.com", "password": PASSWORD},
            )
            assert ok.status_code == 200
        refused = await client.post(
            "/auth/login",
            headers={"X-Forwarded-For": "198.51.100.3"},
            json={"email": "ada@example.com", "password": PASSWORD},
        )
        assert_throttled(refused, "rate_limited", 60)
        sessions = (await client.get("/me/sessions", headers=bearer(tokens))).json()["sessions"]
        assert {s["ip"] for s in sessions} == {PEER}


async def test_a_trusted_proxy_forwards_the_client_address(sqlite_settings: Settings) -> None:
    trusted = (ipaddress.ip_network("192.0.2.0/24"),)
    async with (
        running(sqlite_settings, rate_limit="2/minute", trusted_proxies=trusted) as keyturn,
        http(keyturn, peer=PROXY) as proxy,
    ):
        body = {"email": "ada@example.com", "password": PASSWORD}
        alice = {"X-Forwarded-For": "198.51.100.1"}
        tokens = (await proxy.post("/auth/register", headers=alice, json=body)).json()
        for _ in range(2):
            assert (await proxy.post("/auth/login", headers=alice, json=body)).status_code == 200
        assert_throttled(
            await proxy.post("/auth/login", headers=alice, json=body), "rate_limited", 60
        )
        # A client cannot escape by prepending addresses of its own: the proxy appends the
        # address it saw, and keyturn reads from the right (nearest untrusted hop).
        spoofed = {"X-Forwarded-For": "203.0.113.50, 198.51.100.1"}
        assert (await proxy.post("/auth/login", headers=spoofed, json=body)).status_code == 429
        # Behind a chain of trusted proxies, the client is still the first untrusted hop.
        chained = {"X-Forwarded-For": "198.51.100.1, 192.0.2.20"}
        assert (await proxy.post("/auth/login", headers=chained, json=body)).status_code == 429
        # Another client behind the same proxy has its own budget.
        bob = {"X-Forwarded-For": "198.51.100.2"}
        assert (await proxy.post("/auth/login", headers=bob, json=body)).status_code == 200
        sessions = (await proxy.get("/me/sessions", headers=bearer(tokens))).json()["sessions"]
        assert {s["ip"] for s in sessions} == {"198.51.100.1", "198.51.100.2"}
        # Without X-Forwarded-For, the proxy itself is the client.
        assert (await proxy.post("/auth/login", json=body)).status_code == 200


async def test_an_unreachable_redis_is_a_503_not_a_500_nor_no_limit(
    sqlite_settings: Settings,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    async with (
        running(sqlite_settings, rate_limit="3/minute", redis_url=closed) as keyturn,
        http(keyturn) as client,
    ):
        response = await client.post(
            "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
        )
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unavailable"
        assert "redis" not in response.text.lower()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] is False


# --- several instances, one count in Redis ------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of this file's own, empty before and after each test."""
    configured = os.environ.get("KEYTURN_TEST_REDIS_URL")
    base = make_url(configured or "redis://127.0.0.1:6379/0")
    url = base.set(database=str(REDIS_TEST_DB)).render_as_string(hide_password=False)
    connection = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        connection.flushdb()
    except redis.RedisError as error:
        if configured:
            pytest.fail(f"KEYTURN_TEST_REDIS_URL={configured} does not answer: {error}")
        pytest.skip(f"no Redis at {url} (set KEYTURN_TEST_REDIS_URL): {error}")
    try:
        yield url
    finally:
        connection.flushdb()
        connection.close()


@pytest.mark.server
def test_two_server_processes_share_one_count_in_redis(tmp_path: Path, redis_url: str) -> None:
    env = server_env(
        f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}",
        KEYTURN_REDIS_URL=redis_url,
        KEYTURN_RATE_LIMIT="5/minute",
        KEYTURN_LOGIN_FAILURE_LIMIT="2",
        KEYTURN_LOGIN_FAILURE_WINDOW="60",
    )
    with ExitStack() as stack:
        a, b = (stack.enter_context(running_server(env, cwd=tmp_path)) for _ in range(2))
        stale = {"refresh_token": "x" * 43}
        statuses = [httpx.post(f"{a}/auth/refresh", json=stale).status_code for _ in range(3)]
        statuses += [httpx.post(f"{b}/auth/refresh", json=stale).status_code for _ in range(2)]
        assert statuses == [401] * 5
        sixth = httpx.post(f"{b}/auth/refresh", json=stale)
        assert sixth.status_code == 429
        assert sixth.json()["code"] == "rate_limited"
        assert 1 <= int(sixth.headers["retry-after"]) <= 60
        assert httpx.post(f"{a}/auth/refresh", json=stale).status_code == 429

        # Login failures for one email, too: two at A throttle it at B.
        wrong = {"email": "ada@example.com", "password": "not the password"}
        assert [httpx.post(f"{a}/auth/login", json=wrong).status_code for _ in range(2)] == [
            401,
            401,
        ]
        throttled = httpx.post(f"{b}/auth/login", json=wrong)
        assert throttled.status_code == 429
        assert throttled.json()["code"] == "too_many_attempts"
        assert httpx.get(f"{b}/readyz").json()["checks"]["redis"] is True
    # Nothing in Redis names the email address.
    with redis.Redis.from_url(redis_url) as connection:
        keys = connection.keys("*")
    assert keys
    assert not [key for key in keys if b"ada" in key]


async def test_a_login_without_earlier_failures_asks_redis_once_and_a_later_one_clears_them(
    sqlite_settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A success clears the email's failures only when it has some: with Redis, a login is one
    round trip to the store, not a look and a clear."""
    async with (
        running(
            sqlite_settings, redis_url=redis_url, login_failure_limit=3, login_failure_window=60
        ) as keyturn,
        http(keyturn) as client,
    ):
        store = keyturn.throttle.storage
        cleared: list[str] = []
        clear = store.clear

        async def counted_clear(key: str) -> None:
            cleared.append(key)
            await clear(key)

        monkeypatch.setattr(store, "clear", counted_clear)
        await register(client)
        await login(client)
        assert cleared == []

        assert (await attempt(client, "ada@example.com")).status_code == 401
        await login(client)
        assert len(cleared) == 1
        # The failure before it no longer counts: three new ones are needed for the throttle.
        for _ in range(3):
            assert (await attempt(client, "ada@example.com")).status_code == 401
        assert_throttled(
            await attempt(client, "ada@example.com", PASSWORD), "too_many_attempts", 60
        )
