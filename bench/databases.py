"""Throw-away databases: a SQLite file in a temp directory, or a PostgreSQL database made and
dropped for the run."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def postgres_admin_url() -> str:
    """Where to create throw-away databases (`BENCH_POSTGRES_URL`, else the local server)."""
    return os.environ.get("BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL


@dataclass
class TempDatabase:
    """One database for one server; `url` is what keyturn's KEYTURN_DATABASE_URL takes."""

    backend: str
    url: str  # SQLAlchemy async URL
    dsn: str  # the same database for a plain driver (sqlite3 path or asyncpg DSN)
    name: str

    @property
    def sqlite_path(self) -> Path:
        return Path(self.dsn)


class DatabaseFactory:
    """Makes temp databases and removes every one of them at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._postgres: list[str] = []

    def create(self, backend: str, label: str) -> TempDatabase:
        if backend == SQLITE:
            path = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.workdir)) / "bench.db"
            return TempDatabase(SQLITE, f"sqlite+aiosqlite:///{path}", str(path), label)
        name = f"bench_{re.sub(r'[^a-z0-9_]', '_', label.lower())}_{uuid.uuid4().hex[:8]}"
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
        self._postgres.append(name)
        dsn = make_url(postgres_admin_url()).set(drivername="postgresql", database=name)
        url = dsn.set(drivername="postgresql+asyncpg")
        return TempDatabase(
            POSTGRESQL,
            url.render_as_string(hide_password=False),
            dsn.render_as_string(hide_password=False),
            name,
        )

    def drop_all(self) -> None:
        while self._postgres:
            name = self._postgres.pop()
            try:
                asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception as error:  # a leftover database is worth a warning, not a crash
                print(f"bench: could not drop database {name}: {error}")


def postgres_available() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        asyncio.run(_postgres_admin("SELECT 1", connect_timeout=5))
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


async def _postgres_admin(statement: str, *, connect_timeout: float = 30) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    dsn = make_url(postgres_admin_url()).set(drivername="postgresql")
    connection = await asyncpg.connect(
        dsn.render_as_string(hide_password=False), timeout=connect_timeout
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
