"""The argon2 bound: how many password verifications per second the configured cost allows."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher, Type

from keyturn.config import Argon2Parameters

PASSWORD = "Bench-Secret-7419-kt"


@dataclass(frozen=True, slots=True)
class Argon2Bound:
    memory_kib: int
    time_cost: int
    parallelism: int
    cores: int
    pool_threads: int  # keyturn's hashing pool (Settings.hash_concurrency)
    per_second_all_cores: float  # the mean of `all_cores_samples`
    per_second_pool: float
    seconds_per_hash: float  # one verification on an idle core
    # Each taken with every core hashing: right before and right after the login row.
    all_cores_samples: tuple[float, ...] = ()


def verifications_per_second(parameters: Argon2Parameters, threads: int, seconds: float) -> float:
    """argon2-cffi releases the GIL, so `threads` threads use that many cores."""
    hasher = PasswordHasher(
        time_cost=parameters.time_cost,
        memory_cost=parameters.memory_kib,
        parallelism=parameters.parallelism,
        type=Type.ID,
    )
    stored = hasher.hash(PASSWORD)
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(slot: int) -> None:
        while time.perf_counter() < deadline:
            hasher.verify(stored, PASSWORD)
            counts[slot] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def measure(
    parameters: Argon2Parameters,
    *,
    cores: int,
    pool: int,
    seconds: float,
    all_cores_samples: Sequence[float],
) -> Argon2Bound:
    """The bound, with the all-cores rate the mean of `all_cores_samples`, which the caller took
    beside the row it compares."""
    single = verifications_per_second(parameters, 1, seconds)
    samples = tuple(all_cores_samples)
    all_cores = sum(samples) / len(samples)
    if pool == 1:
        pool_rate = single
    elif pool == cores:
        pool_rate = all_cores
    else:
        pool_rate = verifications_per_second(parameters, pool, seconds)
    return Argon2Bound(
        memory_kib=parameters.memory_kib,
        time_cost=parameters.time_cost,
        parallelism=parameters.parallelism,
        cores=cores,
        pool_threads=pool,
        per_second_all_cores=all_cores,
        per_second_pool=pool_rate,
        seconds_per_hash=1 / single,
        all_cores_samples=samples,
    )
