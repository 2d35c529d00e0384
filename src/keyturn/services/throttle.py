"""Abuse limits: per-IP request rates and per-account login failures (the `limits` library).

In memory by default; in Redis when configured, so that every instance shares one count.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum

from limits import RateLimitItem, RateLimitItemPerSecond, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from keyturn.errors import TooManyAttempts, TooManyRequests, Unavailable


class Action(StrEnum):
    """Endpoints with their own per-IP budget (CONTRACT section 2, KEYTURN_RATE_LIMIT)."""

    REGISTER = "register"
    LOGIN = "login"
    TOKEN = "token"
    REFRESH = "refresh"
    REAUTHENTICATE = "reauthenticate"


_FAILURES = "login-failures"


def _storage(redis_url: str | None) -> Storage:
    if redis_url:
        return RedisStorage(
            redis_url, implementation="redispy", key_prefix="keyturn", wrap_exceptions=True
        )
    return MemoryStorage()


def _email_key(email: str) -> str:
    # Hashed, so that Redis holds no address; counted whether or not the account exists.
    return hashlib.sha256(email.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


class Throttle:
    def __init__(
        self,
        *,
        rate_limit: str | None,
        login_failure_limit: int,
        login_failure_window: int,
        redis_url: str | None,
    ) -> None:
        self.storage = _storage(redis_url)
        self._rates: list[RateLimitItem] = parse_many(rate_limit) if rate_limit else []
        # A moving window: no burst of twice the limit across a window boundary.
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._failures = RateLimitItemPerSecond(login_failure_limit, login_failure_window)

    async def hit(self, action: Action, client_ip: str | None) -> None:
        """Count one request; raise `TooManyRequests` when this IP is over any configured rate."""
        if not self._rates:  # limits off: not even the error guard's context manager
            return
        key = client_ip or "unknown"
        async with _store_errors():
            for item in self._rates:
                if not await self._limiter.hit(item, str(action), key):
                    stats = await self._limiter.get_window_stats(item, str(action), key)
                    raise TooManyRequests(_seconds_until(stats.reset_time))

    async def check_login_allowed(self, email: str) -> bool:
        """Refuse before any password check once an email has too many recent failures.

        True when it has some: only then does a success clear them, so that a login without
        earlier failures asks the store once (with Redis, one round trip, not two). A failure
        recorded by a concurrent attempt after this look then stays until its window passes,
        which errs on the strict side."""
        async with _store_errors():
            stats = await self._limiter.get_window_stats(
                self._failures, _FAILURES, _email_key(email)
            )
        if stats.remaining <= 0:
            raise TooManyAttempts(_seconds_until(stats.reset_time))
        return stats.remaining < self._failures.amount

    async def record_login_failure(self, email: str) -> None:
        async with _store_errors():
            await self._limiter.hit(self._failures, _FAILURES, _email_key(email))

    async def clear_login_failures(self, email: str) -> None:
        async with _store_errors():
            await self._limiter.clear(self._failures, _FAILURES, _email_key(email))

    async def ping(self) -> bool:
        try:
            return bool(await self.storage.check())
        except Exception:
            return False

    async def reset(self) -> None:
        """Forget every count (tests and operators)."""
        await self.storage.reset()


@asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    """An unreachable Redis is a clean 503, never a 500 (and never silently no limit)."""
    try:
        yield
    except (StorageError, ConnectionError, OSError) as error:
        raise Unavailable("The rate limit store is unreachable.") from error


def _seconds_until(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))
