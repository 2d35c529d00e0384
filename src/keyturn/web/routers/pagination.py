"""Opaque cursors: clients pass back what we gave them and never parse it."""

from __future__ import annotations

import base64
import binascii

from keyturn.errors import InvalidRequest


def encode_cursor(value: int | str) -> str:
    return base64.urlsafe_b64encode(str(value).encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None, *, numeric: bool) -> int | str | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if numeric:
            return int(raw)
        if not raw.isalnum() or len(raw) > 64:
            raise ValueError(raw)
        return raw
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "The cursor is not valid.", fields=[{"field": "cursor", "message": "invalid cursor"}]
        ) from None
