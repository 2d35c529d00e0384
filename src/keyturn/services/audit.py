"""Audit events: their types, how a use case records one, and reading and verifying the chain."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from keyturn.errors import AuditLogBroken, Unavailable
from keyturn.services.context import ClientInfo, Clock
from keyturn.storage import audit as audit_store
from keyturn.storage.database import Database
from keyturn.storage.records import AuditEvent

log = logging.getLogger("keyturn.audit")

SEAL_BATCH = 500  # events chained per sealing transaction
# Seconds between looks for unsealed events while events keep arriving. A look is about six
# round trips on PostgreSQL whatever it finds: every 50 ms, under 80 logins a second, that was
# 0.17 ms of the event loop's CPU and 0.16 ms of PostgreSQL's per login (1.4 % of a login, on
# the cores that hash). Readers of the chain seal first, so none of them waits for a look.
SEAL_EVERY = 0.25
SEAL_IDLE = 1.0  # ... and at most this long once none came


class EventType(StrEnum):
    USER_REGISTERED = "user.registered"
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    SESSION_REFRESHED = "session.refreshed"
    SESSION_REVOKED = "session.revoked"
    REFRESH_TOKEN_REUSED = "refresh_token.reused"
    PASSWORD_CHANGED = "password.changed"
    PROFILE_UPDATED = "profile.updated"
    EMAIL_CHANGED = "email.changed"
    REAUTHENTICATED = "reauthenticated"
    REAUTHENTICATION_FAILED = "reauthentication.failed"
    USER_DELETED = "user.deleted"
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    USER_PROMOTED = "user.promoted"
    SESSIONS_REVOKED_BY_ADMIN = "admin.sessions_revoked"
    KEY_ROTATED = "key.rotated"


class RevokeReason(StrEnum):
    LOGOUT = "logout"
    USER = "user"
    ADMIN = "admin"
    PASSWORD_CHANGED = "password_changed"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_DELETED = "account_deleted"


def event(
    type: EventType,
    *,
    now: datetime,
    client: ClientInfo,
    user_id: str | None = None,
    session_id: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One event, ready for `append_events` in the same transaction as the change it records.

    `detail` must never hold a password, token or hash: callers pass reasons and field names.
    """
    return {
        "type": str(type),
        "occurred_at": now,
        "user_id": user_id,
        "session_id": session_id,
        "ip": client.ip,
        "user_agent": client.user_agent,
        "detail": detail,
    }


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where verification failed: the first event that does not fit, and why."""

    event_id: str | None
    seq: int
    reason: str

    def __str__(self) -> str:
        name = self.event_id or f"(missing event, seq {self.seq})"
        return f"audit log broken at event {name} (seq {self.seq}): {self.reason}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    events_checked: int
    broken: ChainBreak | None
    head_seq: int = 0
    head_hash: str = ""

    @property
    def is_intact(self) -> bool:
        return self.broken is None


class AuditService:
    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock

    async def seal(self) -> int:
        """Chain every event committed so far; how many. Readers of the chain call it first,
        so what they see is what was written before they asked."""
        if not await self.database.point_read(audit_store.has_pending):
            return 0
        total = 0
        while True:
            async with self.database.write() as conn:
                sealed = await audit_store.seal_pending(conn, limit=SEAL_BATCH)
            total += sealed
            if sealed < SEAL_BATCH:
                return total

    async def keep_sealing(self) -> None:
        """The server's sealer: events join the chain within `SEAL_EVERY` of their commit while
        they keep coming, within `SEAL_IDLE` after a quiet spell. Every instance runs one; the
        chain head's lock makes them take turns, and any of them seals what another instance
        wrote before it stopped."""
        wait = SEAL_EVERY
        while True:
            await asyncio.sleep(wait)
            try:
                sealed = await self.seal()
            except asyncio.CancelledError:
                raise
            except Unavailable as error:
                log.warning("audit sealing failed, will retry: %s", error)
                sealed = 0
            except Exception:
                log.exception("audit sealing failed, will retry")
                sealed = 0
            wait = SEAL_EVERY if sealed else min(SEAL_IDLE, wait * 2)

    async def list(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        user_id: str | None = None,
        type: str | None = None,
    ) -> tuple[list[AuditEvent], int | None]:
        """A page of events, newest first, and the cursor for the next page (None at the end)."""
        await self.seal()
        async with self.database.read() as conn:
            events = await audit_store.list_events(
                conn, limit=limit + 1, before_seq=before_seq, user_id=user_id, type=type
            )
        if len(events) > limit:
            return events[:limit], events[limit - 1].seq
        return events, None

    async def record(self, *events: dict[str, Any]) -> None:
        """Events that stand alone (no other change to commit with them)."""
        async with self.database.write() as conn:
            await audit_store.append_events(conn, list(events))

    async def verify(self) -> ChainReport:
        """Walk the chain from its anchor; report the first event changed, removed or moved."""
        await self.seal()
        # One snapshot: events appended while we walk must not look like a broken head.
        async with self.database.snapshot() as conn:
            head = await audit_store.chain_head(conn)
            expected_seq, expected_prev = head.pruned_through_seq + 1, head.pruned_hash
            checked = 0
            async for item in audit_store.iterate_events(conn, after_seq=head.pruned_through_seq):
                if item.seq != expected_seq:
                    return ChainReport(checked, ChainBreak(item.id, item.seq, "missing_before"))
                if item.prev_hash != expected_prev:
                    return ChainReport(checked, ChainBreak(item.id, item.seq, "broken_link"))
                recomputed = audit_store.link_hash(
                    asdict(item), seq=item.seq, event_id=item.id, prev_hash=item.prev_hash
                )
                if recomputed != item.hash:
                    return ChainReport(checked, ChainBreak(item.id, item.seq, "content_changed"))
                checked += 1
                expected_seq, expected_prev = item.seq + 1, item.hash
            if expected_seq - 1 != head.last_seq or expected_prev != head.last_hash:
                return ChainReport(checked, ChainBreak(None, expected_seq, "missing_at_end"))
        return ChainReport(checked, None, head.last_seq, head.last_hash)

    async def head(self) -> audit_store.ChainHead:
        """The newest link: record it outside the database (logs, a ticket) to anchor the chain."""
        await self.seal()
        async with self.database.read() as conn:
            return await audit_store.chain_head(conn)

    async def prune(self, before: datetime) -> int:
        """Remove the events before `before`; the first one kept anchors the chain.

        Only an intact chain is pruned: pruning a broken stretch would delete the evidence and
        anchor the chain past the break, so that `verify` passed again.
        """
        report = await self.verify()  # seals first
        if report.broken is not None:
            raise AuditLogBroken(f"{report.broken}; nothing was pruned")
        async with self.database.write() as conn:
            return await audit_store.prune_before(conn, before)
