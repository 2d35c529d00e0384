"""Identifiers: UUIDv7-shaped, unique, and increasing within a process even within one
millisecond, so the audit events of one transaction are sealed in the order they were written."""

from __future__ import annotations

import itertools
import time
import uuid

from keyturn.ids import new_id


def test_ids_are_uuid7_and_carry_the_time_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(new_id())
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_ids_made_in_a_burst_only_ever_increase() -> None:
    burst = [new_id() for _ in range(5000)]  # thousands per millisecond
    assert burst == sorted(burst)
    assert len(set(burst)) == len(burst)
    assert all(uuid.UUID(made).version == 7 for made in burst)
    # Within a millisecond the step is random, not a counter.
    steps = {int(b, 16) - int(a, 16) for a, b in itertools.pairwise(burst)}
    assert len(steps) > len(burst) // 2
