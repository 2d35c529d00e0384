"""Schema migrations (Alembic), run in-process on a live connection."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from keyturn.storage.database import Database

# Any fixed number: every instance that migrates takes this PostgreSQL advisory lock first.
_MIGRATION_LOCK = 0x6B65797475726E


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("keyturn.storage").joinpath("migrations"))
    )
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    command.upgrade(_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision; safe when several instances start at once."""
    async with database.connect() as connection:
        if database.dialect == "postgresql":
            await connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
            await connection.commit()
        try:
            await connection.run_sync(_upgrade)
            await connection.commit()
        finally:
            if database.dialect == "postgresql":
                await connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
                await connection.commit()


async def is_current(database: Database) -> bool:
    """Readiness: the schema is at this code's newest revision, or ahead of it.

    Ahead is fine: in a rolling deploy the new release migrates first (migrations are
    backwards compatible), and the old instances must keep serving until they are replaced.
    """
    async with database.read() as connection:
        current = await connection.run_sync(_current)
    if current is None:
        return False
    if current == head_revision():
        return True
    return current not in _known_revisions()


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
