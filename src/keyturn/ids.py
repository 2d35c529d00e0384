"""Opaque, time-ordered identifiers (UUIDv7 layout), so new rows land at the end of indexes."""

from __future__ import annotations

import os
import threading
import time

_RANDOM_BITS = 74  # UUIDv7's rand_a (12 bits) and rand_b (62 bits)
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_BUFFER = 4096  # random bytes read at a time: one system call per 400 ids, not one each

_lock = threading.Lock()
_last = 0  # the last id's milliseconds and random bits, as one number
_random = b""
_used = _BUFFER


def _forget() -> None:
    """In a forked child: its own random bytes, never the parent's, and a lock that no thread
    of the parent may have held at the fork."""
    global _lock, _last, _random, _used
    _lock, _last, _random, _used = threading.Lock(), 0, b"", _BUFFER


os.register_at_fork(after_in_child=_forget)


def new_id() -> str:
    """32 hex characters: 48 bits of milliseconds, then 74 random bits, with the version and
    variant bits of RFC 9562's UUIDv7.

    Ids this process makes only ever increase (RFC 9562 section 6.2, method 2, "monotonic
    random"): one made in the same millisecond as the one before is that one plus a random
    step of up to 32 bits. Rows written together (a transaction's audit events) therefore sort
    in the order they were made, and the next id is still not guessable from the last.
    """
    global _last, _random, _used
    millis = time.time_ns() // 1_000_000
    with _lock:
        if _used + 10 > len(_random):
            _random, _used = os.urandom(_BUFFER), 0
        bits = int.from_bytes(_random[_used : _used + 10], "big") & _RANDOM_MASK
        _used += 10
        value = (millis << _RANDOM_BITS) | bits
        if value <= _last:
            # A carry past the random bits moves on to the next millisecond.
            value = _last + 1 + (bits & 0xFFFFFFFF)
        _last = value
    millis, bits = value >> _RANDOM_BITS, value & _RANDOM_MASK
    rand_a, rand_b = bits >> 62, bits & ((1 << 62) - 1)
    return f"{(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0x2 << 62) | rand_b:032x}"
