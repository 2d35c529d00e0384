"""Users table access."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.errors import EmailTaken
from keyturn.storage.database import Connection
from keyturn.storage.records import AnyRow, User
from keyturn.storage.schema import users

# Built once (see storage/sessions.py): these run on every login and registration.
_WIDTH = len(users.c)
_INSERT = insert(users)
_BY_ID = select(users).where(users.c.id == bindparam("b_id"))
_BY_EMAIL = select(users).where(users.c.email == bindparam("b_email"))


def user_from_row(row: AnyRow, start: int = 0) -> User:
    """The user in `row`'s columns from `start` on (the record's fields follow the table's)."""
    v = row[start : start + _WIDTH]
    # email_verified, is_admin and is_disabled may come back as integers from a raw read.
    return User(v[0], v[1], v[2], v[3], bool(v[4]), bool(v[5]), bool(v[6]), v[7], v[8], v[9])


async def insert_user(
    conn: Connection,
    *,
    user_id: str,
    email: str,
    name: str | None,
    password_hash: str,
    is_admin: bool,
    now: datetime,
) -> User:
    values = {
        "id": user_id,
        "email": email,
        "name": name,
        "password_hash": password_hash,
        "email_verified": False,
        "is_admin": is_admin,
        "is_disabled": False,
        "created_at": now,
        "updated_at": now,
        "deleted_at": None,
    }
    try:
        await conn.execute(_INSERT, values)
    except IntegrityError:
        raise EmailTaken() from None
    return User(**values)  # type: ignore[arg-type]


async def get_user(conn: Connection, user_id: str) -> User | None:
    row = (await conn.execute(_BY_ID, {"b_id": user_id})).first()
    return user_from_row(row) if row else None


async def get_user_by_email(conn: Connection, email: str) -> User | None:
    row = (await conn.execute(_BY_EMAIL, {"b_email": email})).first()
    return user_from_row(row) if row else None


async def update_user(conn: Connection, user_id: str, **values: Any) -> User | None:
    """Change some columns; returns the new row, or None for an unknown id."""
    try:
        result = await conn.execute(
            update(users).where(users.c.id == user_id).values(**values).returning(users)
        )
        row = result.first()
    except IntegrityError:
        raise EmailTaken() from None
    return user_from_row(row) if row else None


async def search_users(
    conn: Connection, *, query: str | None, limit: int, after_id: str | None
) -> list[User]:
    """Users in id order (creation order), optionally matching an email or name fragment."""
    statement = select(users).where(users.c.deleted_at.is_(None))
    if query:
        pattern = (
            "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        statement = statement.where(
            or_(users.c.email.like(pattern, escape="\\"), users.c.name.ilike(pattern, escape="\\"))
        )
    if after_id:
        statement = statement.where(users.c.id > after_id)
    statement = statement.order_by(users.c.id).limit(limit)
    return [user_from_row(row) for row in await conn.execute(statement)]
