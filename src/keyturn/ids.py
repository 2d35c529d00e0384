"""Opaque, time-ordered identifiers (UUIDv7 layout), so new rows land at the end of indexes."""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """32 hex characters: 48 bits of milliseconds, then 80 random bits (RFC 9562 UUIDv7 shape)."""
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return f"{value:032x}"
