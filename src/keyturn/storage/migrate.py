"""Schema migrations (Alembic), run in-process on a live connection.

Alembic is imported only to migrate: readiness compares the database's revision with
`REVISIONS`, so a serving process that did not migrate never loads it (11 MiB).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from keyturn.storage.database import Database

if TYPE_CHECKING:
    from alembic.config import Config

# Every revision in migrations/versions, oldest first (a test holds this to Alembic's own list).
REVISIONS = ("0001", "0002", "0003", "0004")

# Any fixed number: every instance that migrates takes this PostgreSQL advisory lock first.
_MIGRATION_LOCK = 0x6B65797475726E


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("keyturn.storage").joinpath("migrations"))
    )
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return REVISIONS[-1]


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(_config(connection), "head")


async def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision; safe when several instances start at once."""
    async with database.connect() as connection:
        if database.dialect == "postgresql":
            await connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
            await connection.commit()
        else:
            # Every revision in one transaction, begun now: it takes SQLite's write lock
            # (BEGIN IMMEDIATE), so another process starting on the same file waits for all of
            # them and then finds the schema current. Alembic would otherwise commit after each
            # revision (it does not count SQLite's DDL as transactional), and two processes took
            # turns revision by revision: one read a revision the other had moved past.
            await connection.begin()
        try:
            await connection.run_sync(_upgrade)
            await connection.commit()
        finally:
            if database.dialect == "postgresql":
                await connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
                await connection.commit()


async def current_revision(database: Database) -> str | None:
    """The revision the database is at (Alembic's `alembic_version` table), if any."""
    async with database.read() as connection:
        exists = await connection.run_sync(
            lambda sync: sync.dialect.has_table(sync, "alembic_version")
        )
        if not exists:
            return None
        return (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()


async def is_current(database: Database) -> bool:
    """Readiness: the schema is at this code's newest revision, or ahead of it.

    Ahead is fine: in a rolling deploy the new release migrates first (migrations are
    backwards compatible), and the old instances must keep serving until they are replaced.
    """
    current = await current_revision(database)
    if current is None:
        return False
    return current == head_revision() or current not in REVISIONS
