"""Opaque cursors: clients pass back what we gave them and never parse it."""

from __future__ import annotations

import base64
import binascii

from keyturn.errors import InvalidRequest
from keyturn.services.audit import AuditService
from keyturn.web.schemas import AuditEventOut, EventsOut


def encode_cursor(value: int | str) -> str:
    return base64.urlsafe_b64encode(str(value).encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None, *, numeric: bool) -> int | str | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if numeric:
            value = int(raw)
            if not 0 <= value < 2**63:  # a BIGINT column: larger values fail in the driver
                raise ValueError(raw)
            return value
        if not raw.isalnum() or len(raw) > 64:
            raise ValueError(raw)
        return raw
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "The cursor is not valid.", fields=[{"field": "cursor", "message": "invalid cursor"}]
        ) from None


async def audit_page(
    audit: AuditService,
    *,
    limit: int,
    cursor: str | None,
    user_id: str | None = None,
    type: str | None = None,
) -> EventsOut:
    """One page of audit events, newest first; the cursor stays valid while events arrive."""
    before = decode_cursor(cursor, numeric=True)
    events, next_seq = await audit.list(
        limit=limit,
        before_seq=before if isinstance(before, int) else None,
        user_id=user_id,
        type=type,
    )
    return EventsOut(
        events=[AuditEventOut.of(e) for e in events],
        next_cursor=encode_cursor(next_seq) if next_seq is not None else None,
    )
