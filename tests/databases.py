"""Real databases for tests: a SQLite file, or a PostgreSQL database made and dropped per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from keyturn.storage.database import Connection, Database

POSTGRES_ENV = "KEYTURN_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


def postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def sqlite_file(database_url: str) -> str:
    """The file of a SQLite URL, for a plain `sqlite3` connection (as another process would
    open it)."""
    path = make_url(database_url).database
    assert path
    return path


class CountedWrites:
    """A database's real `write` and `fetch_sql`, counted: every transaction and statement
    still reaches the database."""

    def __init__(self, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.transactions = 0
        self.statements: list[tuple[Any, ...]] = []  # each statement's parameters
        self._write: Callable[..., AbstractAsyncContextManager[Connection]] = database.write
        self._fetch_sql = database.fetch_sql
        monkeypatch.setattr(database, "write", self.write)
        monkeypatch.setattr(database, "fetch_sql", self.fetch_sql)

    @asynccontextmanager
    async def write(self, **options: Any) -> AsyncIterator[Connection]:
        self.transactions += 1
        async with self._write(**options) as conn:
            yield conn

    async def fetch_sql(self, sql: str, *args: Any) -> list[Any]:
        self.statements.append(args)
        return await self._fetch_sql(sql, *args)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def temporary_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database of the given backend; its SQLAlchemy async URL."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}"
        return
    admin = postgres_admin_url()
    assert admin, f"{POSTGRES_ENV} is not set"
    name = f"keyturn_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_asyncpg_dsn(admin))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield (
            make_url(admin)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        connection = await asyncpg.connect(_asyncpg_dsn(admin))
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
