"""Shared fixtures: every storage test runs on real SQLite and, when configured, real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from keyturn import Keyturn, Settings
from keyturn.config import TEST_ARGON2
from tests.clock import FakeClock
from tests.databases import BACKENDS, postgres_admin_url, temporary_database
from tests.instances import client_of, started


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgresql" and not postgres_admin_url():
        pytest.skip("KEYTURN_TEST_POSTGRES_URL is not set")
    return name


@pytest.fixture
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with temporary_database(backend, tmp_path) as url:
        yield url


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL database, for tests whose claim holds only there."""
    if not postgres_admin_url():
        pytest.skip("KEYTURN_TEST_POSTGRES_URL is not set")
    async with temporary_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def settings_for(database_url: str) -> Settings:
    """Cheap argon2 and no rate limits; tests that need other values override them."""
    return Settings(
        database_url=database_url,
        argon2=TEST_ARGON2,
        rate_limit=None,
        cleanup_interval=0,
        issuer="http://testserver",
        cookie_secure=False,
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return settings_for(database_url)


@pytest.fixture
async def sqlite_keyturn(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Keyturn]:
    """A started instance on a SQLite file, for tests whose claim holds only there."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}"
    async with started(settings_for(database_url), clock) as instance:
        yield instance


@pytest.fixture
async def keyturn(settings: Settings, clock: FakeClock) -> AsyncIterator[Keyturn]:
    async with started(settings, clock) as instance:
        yield instance


@pytest.fixture
async def client(keyturn: Keyturn) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(keyturn) as http:
        yield http
