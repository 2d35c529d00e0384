"""Password policy and argon2id hashing that never runs on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib import resources
from typing import TypeVar

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from keyturn.config import Argon2Parameters
from keyturn.errors import WeakPassword

T = TypeVar("T")

MIN_LENGTH = 8
MAX_LENGTH = 1024


def normalize(password: str) -> str:
    """NFKC, so the same password typed on different keyboards hashes the same (NIST 800-63B)."""
    return unicodedata.normalize("NFKC", password)


@cache
def common_passwords() -> frozenset[str]:
    """Django's list of 20,000 common passwords (BSD licence), lower-cased."""
    data = resources.files("keyturn.security").joinpath("common-passwords.txt.gz").read_bytes()
    return frozenset(line.strip().lower() for line in gzip.decompress(data).decode().splitlines())


def check_strength(password: str, *, email: str | None = None) -> str:
    """Return the normalized password, or raise `WeakPassword` saying why."""
    normalized = normalize(password)
    if len(normalized) < MIN_LENGTH:
        raise WeakPassword(f"The password must be at least {MIN_LENGTH} characters long.")
    if len(normalized) > MAX_LENGTH:
        raise WeakPassword(f"The password must be at most {MAX_LENGTH} characters long.")
    if "\x00" in normalized:
        raise WeakPassword("The password must not contain NUL characters.")
    lowered = normalized.lower()
    if lowered in common_passwords():
        raise WeakPassword("This password is too common.")
    if email and lowered in {email.lower(), email.split("@", 1)[0].lower()}:
        raise WeakPassword("The password must not be your email address.")
    return normalized


def _yield_to_requests() -> None:
    """Lower this hashing thread's CPU priority (Linux nice is per thread).

    Hashes may then use every core when nothing else runs, yet the event loop thread, at
    normal priority, keeps serving requests while logins saturate the pool.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class PasswordHasher:
    """argon2id in a bounded pool of worker threads.

    argon2-cffi releases the GIL while hashing, so a pool with fewer threads than cores
    keeps one core free for serving requests while logins queue up.
    """

    def __init__(self, parameters: Argon2Parameters, *, concurrency: int = 1) -> None:
        self.parameters = parameters
        self._argon2 = Argon2Hasher(
            time_cost=parameters.time_cost,
            memory_cost=parameters.memory_kib,
            parallelism=parameters.parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="argon2", initializer=_yield_to_requests
        )
        self._pending = 0
        self._dummy_hash: str | None = None

    @property
    def queue_depth(self) -> int:
        """Hashes submitted and not yet finished (a metric)."""
        return self._pending

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._argon2.hash, normalize(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; a malformed stored hash counts as a mismatch."""
        return await self._run(self._verify_sync, password_hash, normalize(password))

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the stored hash used other parameters than the configured ones."""
        try:
            return self._argon2.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def verify_dummy(self, password: str) -> None:
        """Spend the time of a real verification for an unknown account (Django ticket 20760)."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("keyturn-dummy-password")
        await self.verify(self._dummy_hash, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
