"""Abuse limits: per-IP request rates and per-account login failures (the `limits` library).

In memory by default; in Redis when configured, so that every instance shares one count.
"""

from __future__ import annotations

import hashlib
import math
import time
from enum import StrEnum

from limits import RateLimitItem, RateLimitItemPerSecond, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError

from keyturn.errors import TooManyAttempts, TooManyRequests, Unavailable


class Action(StrEnum):
    """Endpoints with their own per-IP budget (CONTRACT section 2, KEYTURN_RATE_LIMIT)."""

    REGISTER = "register"
    LOGIN = "login"
    TOKEN = "token"
    REFRESH = "refresh"
    REAUTHENTICATE = "reauthenticate"


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
        self._rate_limiter = MovingWindowRateLimiter(self.storage)
        self._failures = RateLimitItemPerSecond(login_failure_limit, login_failure_window)
        self._failure_limiter = FixedWindowRateLimiter(self.storage)

    async def hit(self, action: Action, client_ip: str | None) -> None:
        """Count one request; raise `TooManyRequests` when this IP is over any configured rate."""
        if not self._rates:
            return
        key = client_ip or "unknown"
        try:
            for item in self._rates:
                if not await self._rate_limiter.hit(item, str(action), key):
                    stats = await self._rate_limiter.get_window_stats(item, str(action), key)
                    raise TooManyRequests(_seconds_until(stats.reset_time))
        except (StorageError, ConnectionError, OSError) as error:
            raise Unavailable("The rate limit store is unreachable.") from error

    async def check_login_allowed(self, email: str) -> None:
        """Refuse before any password check once an email has too many recent failures."""
        try:
            allowed = await self._failure_limiter.test(
                self._failures, "login-failures", _email_key(email)
            )
            if not allowed:
                stats = await self._failure_limiter.get_window_stats(
                    self._failures, "login-failures", _email_key(email)
                )
                raise TooManyAttempts(_seconds_until(stats.reset_time))
        except (StorageError, ConnectionError, OSError) as error:
            raise Unavailable("The rate limit store is unreachable.") from error

    async def record_login_failure(self, email: str) -> None:
        await self._failure_limiter.hit(self._failures, "login-failures", _email_key(email))

    async def clear_login_failures(self, email: str) -> None:
        await self._failure_limiter.clear(self._failures, "login-failures", _email_key(email))

    async def ping(self) -> bool:
        try:
            return bool(await self.storage.check())
        except Exception:
            return False

    async def reset(self) -> None:
        """Forget every count (tests and operators)."""
        await self.storage.reset()


def _seconds_until(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))
