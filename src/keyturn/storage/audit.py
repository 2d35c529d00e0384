"""The audit log: an append-only hash chain (each event hashes its content and its predecessor).

An event is written with the change it records, in the same transaction. On PostgreSQL it is
sealed into the chain (given its `seq`, `prev_hash` and `hash`) a moment later, by
`seal_pending`, with the others written meanwhile: chaining at write time made every writer on
every instance queue on the chain's head from its first event until its COMMIT, and sealing in
batches takes that lock once per batch, after the writers have committed. On SQLite, where
the writer already holds the database's one write lock, an event is chained as it is written:
no one waits longer for it, and a second pass over every event (read it back, hash it, update
it) is saved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import bindparam, delete, insert, select, update

from keyturn.ids import new_id
from keyturn.storage.database import Connection
from keyturn.storage.driver import SqliteConnection
from keyturn.storage.records import AnyRow, AuditEvent
from keyturn.storage.schema import audit_chain, audit_events, sqlite_text

_CHAIN_ROW = 1

# Built once (see storage/sessions.py): every login, refresh and logout appends an event.
_HEAD = select(audit_chain).where(audit_chain.c.id == _CHAIN_ROW)
# Sealers on every instance queue here; the lock is held only until their commit.
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_INSERT = insert(audit_events)
_ADVANCE = (
    update(audit_chain)
    .where(audit_chain.c.id == _CHAIN_ROW)
    .values(last_seq=bindparam("b_seq"), last_hash=bindparam("b_hash"))
)
_UNSEALED = audit_events.c.seq.is_(None)
_PENDING = (
    select(audit_events)
    .where(_UNSEALED)
    .order_by(audit_events.c.occurred_at, audit_events.c.id)
    .limit(bindparam("b_limit"))
)
_ANY_PENDING = select(audit_events.c.id).where(_UNSEALED).limit(1)
_SEAL = (
    update(audit_events)
    .where(audit_events.c.id == bindparam("b_id"), _UNSEALED)
    .values(seq=bindparam("b_seq"), prev_hash=bindparam("b_prev"), hash=bindparam("b_hash"))
)


def canonical_hash(
    *,
    seq: int,
    event_id: str,
    type: str,
    occurred_at: datetime,
    user_id: str | None,
    session_id: str | None,
    ip: str | None,
    user_agent: str | None,
    detail: dict[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 over a canonical JSON form of the event and its predecessor's hash: the compact,
    key-sorted, ASCII-only `json.dumps` of all its fields."""
    occurred = occurred_at.isoformat(timespec="microseconds")
    try:
        if seq.__class__ is not int or detail.__class__ is not dict:
            raise TypeError
        # That form written out in its key order, for the usual fields (text or null, an int
        # `seq`, a dict `detail`): the same bytes (a test holds them equal) at a third of the
        # cost; every refresh appends an event.
        encoded = (
            f'{{"detail":{_compact(detail) if detail else "{}"},"id":{_text(event_id)},'
            f'"ip":{_text(ip)},"occurred_at":{_text(occurred)},"prev_hash":{_text(prev_hash)},'
            f'"seq":{seq},"session_id":{_text(session_id)},"type":{_text(type)},'
            f'"user_agent":{_text(user_agent)},"user_id":{_text(user_id)}}}'
        )
    except TypeError:  # a field of another type: the general form
        encoded = _compact(
            {
                "seq": seq,
                "id": event_id,
                "type": type,
                "occurred_at": occurred,
                "user_id": user_id,
                "session_id": session_id,
                "ip": ip,
                "user_agent": user_agent,
                "detail": detail,
                "prev_hash": prev_hash,
            }
        )
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


_json_string: Any = json.encoder.encode_basestring_ascii


def _text(value: str | None) -> str:
    """A text field as `json.dumps(..., ensure_ascii=True)` writes it; TypeError if it is not
    text (C's encoder refuses it)."""
    return "null" if value is None else str(_json_string(value))


CONTENT_FIELDS = ("type", "occurred_at", "user_id", "session_id", "ip", "user_agent", "detail")


def link_hash(content: Mapping[str, Any], *, seq: int, event_id: str, prev_hash: str) -> str:
    """The hash that links an event into the chain: `canonical_hash` of its `CONTENT_FIELDS`
    (`detail` parsed), its place and its predecessor's hash."""
    fields = {name: content[name] for name in CONTENT_FIELDS}
    return canonical_hash(seq=seq, event_id=event_id, prev_hash=prev_hash, **fields)


def _event(row: AnyRow) -> AuditEvent:
    m = row._mapping
    return AuditEvent(
        id=m["id"],
        seq=int(m["seq"]),
        type=m["type"],
        occurred_at=m["occurred_at"],
        user_id=m["user_id"],
        session_id=m["session_id"],
        ip=m["ip"],
        user_agent=m["user_agent"],
        detail=json.loads(m["detail"]),
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


async def _lock_chain(conn: Connection) -> AnyRow:
    statement = _HEAD_FOR_UPDATE if conn.dialect.name == "postgresql" else _HEAD
    row = (await conn.execute(statement)).first()
    if row is None:
        raise RuntimeError("audit_chain row missing; run keyturn migrate")
    return row


def encode_detail(detail: dict[str, Any]) -> str:
    """An event's `detail` as stored (the chain hashes it parsed, in canonical form)."""
    return json.dumps(detail, sort_keys=True) if detail else "{}"  # most have none


async def append_events(conn: Connection, events: list[dict[str, Any]]) -> list[str]:
    """Write events inside the caller's transaction, so a change and its event commit together
    (or neither does); their ids. On PostgreSQL `seal_pending` chains them once committed; on
    SQLite they are chained here, after the head (the transaction holds the write lock)."""
    if not events:
        return []
    ids = [new_id() for _ in events]
    if conn.dialect.name == "sqlite":  # a write transaction's connection (`Database.write`)
        await _append_chained(cast(SqliteConnection, conn), ids, events)
        return ids
    rows = [
        {
            **event,
            "id": event_id,
            "seq": None,
            "prev_hash": None,
            "hash": None,
            "detail": encode_detail(event["detail"]),
        }
        for event_id, event in zip(ids, events, strict=True)
    ]
    await conn.execute(_INSERT, rows)
    return ids


# SQLite's events, chained as they are written: rows in this column order, bound as they are.
_CHAINED_COLUMNS = (
    "id",
    "seq",
    "type",
    "occurred_at",
    "user_id",
    "session_id",
    "ip",
    "user_agent",
    "detail",
    "prev_hash",
    "hash",
)
_INSERT_CHAINED = (
    f"INSERT INTO audit_events ({', '.join(_CHAINED_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join('?' for _ in _CHAINED_COLUMNS)})"
)


async def _append_chained(
    conn: SqliteConnection, ids: list[str], events: list[dict[str, Any]]
) -> None:
    head = (await _lock_chain(conn))._mapping
    seq, prev_hash = int(head["last_seq"]), head["last_hash"]
    rows = []
    for event_id, event in zip(ids, events, strict=True):
        seq += 1
        stored_detail = encode_detail(event["detail"])
        # What verification will read back: the time in UTC, the detail as stored.
        occurred_at = event["occurred_at"].astimezone(UTC)
        stored = {
            **event,
            "occurred_at": occurred_at,
            "detail": json.loads(stored_detail) if event["detail"] else {},
        }
        digest = link_hash(stored, seq=seq, event_id=event_id, prev_hash=prev_hash)
        rows.append(
            (
                event_id,
                seq,
                event["type"],
                sqlite_text(occurred_at),
                event["user_id"],
                event["session_id"],
                event["ip"],
                event["user_agent"],
                stored_detail,
                prev_hash,
                digest,
            )
        )
        prev_hash = digest
    await conn.run_many(_INSERT_CHAINED, rows)
    await conn.execute(_ADVANCE, {"b_seq": seq, "b_hash": prev_hash})


async def has_pending(conn: Connection) -> bool:
    """Whether any committed event still waits to be sealed (an indexed probe)."""
    return (await conn.execute(_ANY_PENDING)).first() is not None


async def seal_pending(conn: Connection, *, limit: int) -> int:
    """Chain up to `limit` unsealed events, oldest first, after the head; how many. (On SQLite
    only events an earlier release wrote wait here.)

    On PostgreSQL the head's row lock serializes sealers across instances: a second one waits,
    then sees the events the first sealed as sealed (its read comes after the lock).
    """
    head = (await _lock_chain(conn))._mapping
    pending = (await conn.execute(_PENDING, {"b_limit": limit})).all()
    if not pending:
        return 0
    seq, prev_hash = int(head["last_seq"]), head["last_hash"]
    seals = []
    for row in pending:
        m = row._mapping
        seq += 1
        content = {**m, "detail": json.loads(m["detail"])}
        digest = link_hash(content, seq=seq, event_id=m["id"], prev_hash=prev_hash)
        seals.append({"b_id": m["id"], "b_seq": seq, "b_prev": prev_hash, "b_hash": digest})
        prev_hash = digest
    await conn.execute(_SEAL, seals)
    await conn.execute(_ADVANCE, {"b_seq": seq, "b_hash": prev_hash})
    return len(seals)


async def list_events(
    conn: Connection,
    *,
    limit: int,
    before_seq: int | None = None,
    user_id: str | None = None,
    type: str | None = None,
) -> list[AuditEvent]:
    """Newest first; `before_seq` continues a page (stable while new events arrive)."""
    statement = select(audit_events).where(audit_events.c.seq.is_not(None))
    if user_id is not None:
        statement = statement.where(audit_events.c.user_id == user_id)
    if type is not None:
        statement = statement.where(audit_events.c.type == type)
    if before_seq is not None:
        statement = statement.where(audit_events.c.seq < before_seq)
    statement = statement.order_by(audit_events.c.seq.desc()).limit(limit)
    return [_event(row) for row in await conn.execute(statement)]


@dataclass(frozen=True, slots=True)
class ChainHead:
    last_seq: int
    last_hash: str
    pruned_through_seq: int
    pruned_hash: str


async def chain_head(conn: Connection) -> ChainHead:
    m = (await conn.execute(_HEAD)).one()._mapping
    return ChainHead(
        last_seq=int(m["last_seq"]),
        last_hash=m["last_hash"],
        pruned_through_seq=int(m["pruned_through_seq"]),
        pruned_hash=m["pruned_hash"],
    )


async def iterate_events(
    conn: Connection, *, after_seq: int, batch_size: int = 2000
) -> AsyncIterator[AuditEvent]:
    """Every event in chain order, read in batches."""
    while True:
        rows = (
            await conn.execute(
                select(audit_events)
                .where(audit_events.c.seq > after_seq)
                .order_by(audit_events.c.seq)
                .limit(batch_size)
            )
        ).all()
        for row in rows:
            event = _event(row)
            after_seq = event.seq
            yield event
        if len(rows) < batch_size:
            return


async def prune_before(conn: Connection, before: datetime) -> int:
    """Delete the oldest events, up to the first at or after `before`; keep the chain anchored."""
    head = await _lock_chain(conn)
    first_kept = (
        await conn.execute(
            select(audit_events.c.seq, audit_events.c.prev_hash)
            # Sealed ones only: events written since the caller sealed join the chain later,
            # after the head, so no prune of the chain so far can reach them.
            .where(audit_events.c.occurred_at >= before, audit_events.c.seq.is_not(None))
            .order_by(audit_events.c.seq)
            .limit(1)
        )
    ).first()
    if first_kept is None:
        through, anchor = int(head._mapping["last_seq"]), head._mapping["last_hash"]
    else:
        through, anchor = int(first_kept[0]) - 1, first_kept[1]
    if through <= int(head._mapping["pruned_through_seq"]):
        return 0
    result = await conn.execute(delete(audit_events).where(audit_events.c.seq <= through))
    await conn.execute(
        update(audit_chain)
        .where(audit_chain.c.id == _CHAIN_ROW)
        .values(pruned_through_seq=through, pruned_hash=anchor)
    )
    return result.rowcount
