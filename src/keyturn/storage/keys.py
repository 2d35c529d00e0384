"""Signing keys and the other server-wide secrets."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import insert, or_, select, update

from keyturn.storage.database import Connection
from keyturn.storage.records import AnyRow, SigningKey
from keyturn.storage.schema import server_secrets, signing_keys


def _key(row: AnyRow) -> SigningKey:
    m = row._mapping
    return SigningKey(
        kid=m["kid"],
        algorithm=m["algorithm"],
        private_pem=m["private_pem"],
        public_jwk=json.loads(m["public_jwk"]),
        created_at=m["created_at"],
        retired_at=m["retired_at"],
        publish_until=m["publish_until"],
    )


async def published_keys(conn: Connection, *, now: datetime) -> list[SigningKey]:
    """The active key and every retired key still inside its publication window, newest first."""
    result = await conn.execute(
        select(signing_keys)
        .where(or_(signing_keys.c.publish_until.is_(None), signing_keys.c.publish_until > now))
        .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid.desc())
    )
    return [_key(row) for row in result]


async def insert_key(
    conn: Connection,
    *,
    kid: str,
    algorithm: str,
    private_pem: str,
    public_jwk: dict[str, str],
    now: datetime,
) -> None:
    await conn.execute(
        insert(signing_keys).values(
            kid=kid,
            algorithm=algorithm,
            private_pem=private_pem,
            public_jwk=json.dumps(public_jwk),
            created_at=now,
            retired_at=None,
            publish_until=None,
        )
    )


async def retire_active_keys(
    conn: Connection, *, except_kid: str, now: datetime, publish_until: datetime
) -> None:
    await conn.execute(
        update(signing_keys)
        .where(signing_keys.c.retired_at.is_(None), signing_keys.c.kid != except_kid)
        .values(retired_at=now, publish_until=publish_until)
    )


async def server_secret(conn: Connection, name: str) -> bytes:
    """A secret the migrations created (see migrations/versions/0003_rotation_secret.py)."""
    value = (
        await conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))
    ).scalar()
    if value is None:
        raise RuntimeError(f"server secret {name!r} missing; run keyturn migrate")
    return bytes(value)
