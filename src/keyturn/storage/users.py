"""Users table access."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from keyturn.errors import EmailTaken
from keyturn.storage.records import AnyRow, User
from keyturn.storage.schema import users


def user_from_row(row: AnyRow) -> User:
    m = row._mapping
    return User(
        id=m["id"],
        email=m["email"],
        name=m["name"],
        password_hash=m["password_hash"],
        email_verified=bool(m["email_verified"]),
        is_admin=bool(m["is_admin"]),
        is_disabled=bool(m["is_disabled"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        deleted_at=m["deleted_at"],
    )


async def insert_user(
    conn: AsyncConnection,
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
        await conn.execute(insert(users).values(**values))
    except IntegrityError:
        raise EmailTaken() from None
    return User(**values)  # type: ignore[arg-type]


async def get_user(conn: AsyncConnection, user_id: str) -> User | None:
    row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
    return user_from_row(row) if row else None


async def get_user_by_email(conn: AsyncConnection, email: str) -> User | None:
    row = (await conn.execute(select(users).where(users.c.email == email))).first()
    return user_from_row(row) if row else None


async def update_user(conn: AsyncConnection, user_id: str, **values: Any) -> User | None:
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
    conn: AsyncConnection, *, query: str | None, limit: int, after_id: str | None
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
