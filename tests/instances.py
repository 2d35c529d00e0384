"""Started `Keyturn`s and clients for them, for tests that need more than the fixtures' one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from keyturn import Keyturn, Settings
from keyturn.config import TEST_ARGON2, load_settings
from keyturn.services.context import Clock
from keyturn.web.app import create_app

DEFAULT_PEER = "203.0.113.7"  # the ASGI client address every test client connects from


def settings_from_env(database_url: str, **env: str) -> Settings:
    """Settings from environment variables, as the server builds them (only argon2 cheapened)."""
    variables = {
        "KEYTURN_DATABASE_URL": database_url,
        "KEYTURN_ISSUER": "http://testserver",
        "KEYTURN_RATE_LIMIT": "off",
        "KEYTURN_CLEANUP_INTERVAL": "0",
        **env,
    }
    return load_settings(variables).with_overrides(argon2=TEST_ARGON2)


@asynccontextmanager
async def started(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Keyturn]:
    """A migrated `Keyturn` with its signing key, stopped afterwards (no background tasks)."""
    instance = Keyturn(settings, clock=clock) if clock is not None else Keyturn(settings)
    await instance.start(background=False)
    try:
        yield instance
    finally:
        await instance.stop()


@asynccontextmanager
async def client_of(keyturn: Keyturn, peer: str = DEFAULT_PEER) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the standalone app of `keyturn`, over the ASGI transport."""
    transport = httpx.ASGITransport(app=create_app(keyturn), client=(peer, 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@asynccontextmanager
async def serving(
    settings: Settings, clock: Clock | None = None, peer: str = DEFAULT_PEER
) -> AsyncIterator[tuple[Keyturn, httpx.AsyncClient]]:
    """Another instance and a client for it, like the `keyturn` and `client` fixtures."""
    async with started(settings, clock) as instance, client_of(instance, peer) as http:
        yield instance, http
