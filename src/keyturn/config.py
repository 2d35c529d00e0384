"""Settings: every knob keyturn has, read from the environment only when asked."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keyturn.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MetricsMode = Literal["local", "public", "off"]


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    """argon2id cost; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    memory_kib: int = 19 * 1024
    time_cost: int = 2
    parallelism: int = 1


# Cheapest parameters argon2-cffi accepts; for tests only, never reachable from the environment.
TEST_ARGON2 = Argon2Parameters(memory_kib=8, time_cost=1, parallelism=1)


DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./keyturn.db"
DEFAULT_RATE_LIMIT = "30/minute"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a running keyturn needs to know; durations are whole seconds."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    issuer: str = "http://127.0.0.1:8000"
    access_token_ttl: int = 900
    session_idle_ttl: int = 604_800
    session_max_ttl: int = 2_592_000
    refresh_reuse_grace: int = 10
    fresh_age: int = 600
    login_failure_limit: int = 5
    login_failure_window: int = 300
    rate_limit: str | None = DEFAULT_RATE_LIMIT
    cleanup_interval: int = 3600
    trusted_proxies: tuple[IPNetwork, ...] = ()
    metrics: MetricsMode = "local"
    argon2: Argon2Parameters = field(default_factory=Argon2Parameters)
    # Concurrent argon2 hashes: every core, at a lower thread priority than the event loop.
    hash_concurrency: int = max(1, os.cpu_count() or 1)
    # Connections per process (PostgreSQL); requests queue for one rather than open more.
    database_pool_size: int = 20
    # Browser clients on plain http://localhost need cookies without the Secure flag.
    cookie_secure: bool = True
    key_refresh_interval: int = 30

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, host apps)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def session_touch_interval(self) -> int:
        """How often `last_seen_at` may be written: once a minute, finer only for tiny idle TTLs."""
        return max(1, min(60, self.session_idle_ttl // 4))


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def listen_host(env: Mapping[str, str], flag: str | None = None) -> str:
    """The address `keyturn serve` listens on: `--host`, else `HOST`, else 127.0.0.1; a name
    must resolve (an address that resolves but is not this machine's fails at bind)."""
    name, host = ("--host", flag) if flag else ("HOST", env.get("HOST", "").strip() or "127.0.0.1")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ConfigError(name, f"is not an address or a name that resolves: {host!r}") from None
    return host


def listen_port(env: Mapping[str, str], flag: int | None = None) -> int:
    """The port `keyturn serve` listens on: `--port`, else `PORT`, else 8000."""
    name, port = ("--port", flag) if flag is not None else ("PORT", _integer(env, "PORT", 8000))
    if not 1 <= port <= 65535:
        raise ConfigError(name, f"must be a port number from 1 to 65535, got {port}")
    return port


# The drivers keyturn runs on, and the URL schemes people already have for the same databases
# (a libpq-style `postgresql://`, Heroku's `postgres://`, SQLAlchemy's plain `sqlite://`).
_DRIVERS = {
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def _database_url(env: Mapping[str, str]) -> str:
    name = "KEYTURN_DATABASE_URL"
    raw = env.get(name, "").strip() or DEFAULT_DATABASE_URL
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(name, "is not a database URL") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(
            name,
            f"driver {url.drivername!r} unsupported; use sqlite+aiosqlite or postgresql+asyncpg",
        )
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("KEYTURN_REDIS_URL", "").strip()
    if not raw:
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("KEYTURN_REDIS_URL", "must start with redis://, rediss:// or unix://")
    return raw


def _rate_limit(env: Mapping[str, str]) -> str | None:
    from limits import parse_many

    raw = env.get("KEYTURN_RATE_LIMIT", "").strip() or DEFAULT_RATE_LIMIT
    if raw.lower() == "off":
        return None
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError("KEYTURN_RATE_LIMIT", f"is not in limits notation: {raw!r}") from None
    return raw


def _trusted_proxies(env: Mapping[str, str]) -> tuple[IPNetwork, ...]:
    raw = env.get("KEYTURN_TRUSTED_PROXIES", "")
    networks: list[IPNetwork] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError("KEYTURN_TRUSTED_PROXIES", f"{part!r} is not an address") from None
    return tuple(networks)


def _metrics(env: Mapping[str, str]) -> MetricsMode:
    raw = env.get("KEYTURN_METRICS", "local").strip().lower() or "local"
    if raw == "local":
        return "local"
    if raw == "public":
        return "public"
    if raw == "off":
        return "off"
    raise ConfigError("KEYTURN_METRICS", f"must be local, public or off, got {raw!r}")


def load_settings(
    env: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 8000
) -> Settings:
    """Build settings from environment variables; raise `ConfigError` naming the bad one."""
    env = os.environ if env is None else env
    issuer = env.get("KEYTURN_ISSUER", "").strip() or f"http://{host}:{port}"
    if not issuer.startswith(("http://", "https://")):
        raise ConfigError("KEYTURN_ISSUER", "must be an http(s) URL")
    settings = Settings(
        database_url=_database_url(env),
        redis_url=_redis_url(env),
        issuer=issuer,
        access_token_ttl=_integer(env, "KEYTURN_ACCESS_TOKEN_TTL", 900, minimum=1),
        session_idle_ttl=_integer(env, "KEYTURN_SESSION_IDLE_TTL", 604_800, minimum=1),
        session_max_ttl=_integer(env, "KEYTURN_SESSION_MAX_TTL", 2_592_000, minimum=1),
        refresh_reuse_grace=_integer(env, "KEYTURN_REFRESH_REUSE_GRACE", 10),
        fresh_age=_integer(env, "KEYTURN_FRESH_AGE", 600),
        login_failure_limit=_integer(env, "KEYTURN_LOGIN_FAILURE_LIMIT", 5, minimum=1),
        login_failure_window=_integer(env, "KEYTURN_LOGIN_FAILURE_WINDOW", 300, minimum=1),
        rate_limit=_rate_limit(env),
        cleanup_interval=_integer(env, "KEYTURN_CLEANUP_INTERVAL", 3600),
        trusted_proxies=_trusted_proxies(env),
        metrics=_metrics(env),
        database_pool_size=_integer(env, "KEYTURN_DATABASE_POOL_SIZE", 20, minimum=1),
        cookie_secure=_cookies_need_tls(issuer),
    )
    validate(settings)
    return settings


def _cookies_need_tls(issuer: str) -> bool:
    """Secure cookies everywhere except plain-http development on this machine."""
    host = (urlsplit(issuer).hostname or "").lower()
    return not (issuer.startswith("http://") and host in {"localhost", "127.0.0.1", "::1"})


def validate(settings: Settings) -> None:
    """Reject settings that contradict each other."""
    if settings.session_idle_ttl > settings.session_max_ttl:
        raise ConfigError("KEYTURN_SESSION_IDLE_TTL", "must not exceed KEYTURN_SESSION_MAX_TTL")
    if settings.access_token_ttl > settings.session_max_ttl:
        raise ConfigError("KEYTURN_ACCESS_TOKEN_TTL", "must not exceed KEYTURN_SESSION_MAX_TTL")
    if settings.refresh_reuse_grace >= settings.session_idle_ttl:
        raise ConfigError(
            "KEYTURN_REFRESH_REUSE_GRACE", "must be shorter than KEYTURN_SESSION_IDLE_TTL"
        )
