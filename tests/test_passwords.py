"""Password policy and argon2id hashing (unit tests, no database)."""

from __future__ import annotations

import asyncio
import time

import pytest
from argon2 import PasswordHasher as Argon2

from keyturn.config import TEST_ARGON2, Argon2Parameters
from keyturn.errors import WeakPassword
from keyturn.security.passwords import PasswordHasher, check_strength, common_passwords, normalize


def test_at_least_ten_thousand_common_passwords_ship_with_the_package() -> None:
    assert len(common_passwords()) >= 10_000
    assert "password" in common_passwords()


@pytest.mark.parametrize("weak", ["1234567", "password", "Password1", "iloveyou", "qwertyuiop"])
def test_short_or_common_passwords_are_weak(weak: str) -> None:
    with pytest.raises(WeakPassword):
        check_strength(weak)


def test_length_limits_count_characters_after_nfkc() -> None:
    assert check_strength("é" * 8) == "é" * 8
    with pytest.raises(WeakPassword):
        check_strength("z" * 1025)
    assert len(check_strength("z" * 1024)) == 1024


def test_the_email_is_not_a_password() -> None:
    with pytest.raises(WeakPassword):
        check_strength("ada.lovelace@example.com", email="ada.lovelace@example.com")
    with pytest.raises(WeakPassword):
        check_strength("ada.lovelace", email="ada.lovelace@example.com")


def test_nfkc_makes_compatibility_forms_equal() -> None:
    # Fullwidth letters and the "ﬁ" ligature normalize to their plain forms.
    assert normalize("\uff50\uff41\uff53\uff53\ufb01") == "passfi"


async def test_hash_and_verify_roundtrip_with_normalization() -> None:
    hasher = PasswordHasher(TEST_ARGON2)
    try:
        fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "correct")
        stored = await hasher.hash(f"{fullwidth} horse")
        assert stored.startswith("$argon2id$")
        assert await hasher.verify(stored, "correct horse")
        assert not await hasher.verify(stored, "correct horsE")
        assert not await hasher.verify("not-a-hash", "correct horse")
    finally:
        hasher.close()


async def test_production_parameters_are_at_least_owasp_minimum() -> None:
    defaults = Argon2Parameters()
    assert (defaults.memory_kib, defaults.time_cost, defaults.parallelism) >= (19 * 1024, 2, 1)
    hasher = PasswordHasher(defaults)
    try:
        stored = await hasher.hash("correct horse battery staple")
        assert "$m=19456,t=2,p=1$" in stored
        assert await hasher.verify(stored, "correct horse battery staple")
    finally:
        hasher.close()


def test_hashes_with_other_parameters_need_a_rehash() -> None:
    hasher = PasswordHasher(Argon2Parameters())
    try:
        old = Argon2(time_cost=1, memory_cost=8, parallelism=1).hash("x")
        assert hasher.needs_rehash(old)
        current = Argon2(time_cost=2, memory_cost=19 * 1024, parallelism=1).hash("x")
        assert not hasher.needs_rehash(current)
    finally:
        hasher.close()


async def test_hashing_never_blocks_the_event_loop() -> None:
    """While argon2 runs, the loop keeps ticking: hashing happens in worker threads."""
    hasher = PasswordHasher(Argon2Parameters(memory_kib=64 * 1024, time_cost=3), concurrency=1)
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        await asyncio.gather(*(hasher.hash("correct horse battery") for _ in range(3)))
    finally:
        stop = True
        await task
        hasher.close()
    elapsed = time.perf_counter() - started
    # A blocked loop would tick about once per hash; a free one ticks many times.
    assert ticks > 10 * 3, (ticks, elapsed)


async def test_unknown_account_verification_costs_a_real_hash() -> None:
    hasher = PasswordHasher(Argon2Parameters(memory_kib=32 * 1024, time_cost=2))
    try:
        stored = await hasher.hash("correct horse battery")
        await hasher.verify_dummy("warm-up")
        rounds = 3
        t0 = time.perf_counter()
        for _ in range(rounds):
            await hasher.verify(stored, "wrong password")
        real = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(rounds):
            await hasher.verify_dummy("wrong password")
        dummy = time.perf_counter() - t0
    finally:
        hasher.close()
    assert 0.5 < dummy / real < 2.0, (dummy, real)
