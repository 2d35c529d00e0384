"""A database written by the first schema revision upgrades in place: its sessions keep
working and its audit chain stays verifiable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import Connection as SyncConnection
from sqlalchemy import event, insert, text, update

from keyturn.security import opaque_tokens
from keyturn.storage import migrate
from keyturn.storage import sessions as session_store
from keyturn.storage.audit import canonical_hash
from keyturn.storage.database import Database
from keyturn.storage.schema import audit_events, refresh_tokens, sessions
from tests.actions import PASSWORD
from tests.conftest import settings_for
from tests.instances import serving

GENESIS = "0" * 64
NOW = datetime.now(UTC).replace(microsecond=0)


def _time(backend: str, value: datetime) -> Any:
    # How revision 0001 stored a timestamp on each backend (naive UTC text on SQLite).
    return value.replace(tzinfo=None).isoformat(" ") if backend == "sqlite" else value


async def _write_revision_0001_data(database: Database, backend: str, token: str) -> None:
    """A user with one session and one refresh token, and one chained audit event, as a
    server on revision 0001 wrote them (each session had its own rotation key)."""

    def to_0001(connection: SyncConnection) -> None:
        command.upgrade(migrate._config(connection), "0001")

    async with database.engine.begin() as conn:
        await conn.run_sync(to_0001)
    now, later = _time(backend, NOW), _time(backend, NOW + timedelta(days=1))
    event: dict[str, Any] = {
        "type": "user.registered",
        "occurred_at": NOW,
        "user_id": "u" * 32,
        "session_id": None,
        "ip": "192.0.2.1",
        "user_agent": "old",
        "detail": {},
    }
    digest = canonical_hash(seq=1, event_id="e" * 32, prev_hash=GENESIS, **event)
    async with database.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, email, name, password_hash, email_verified, is_admin,"
                " is_disabled, created_at, updated_at) VALUES"
                " (:id, 'old@example.com', 'Old', 'x', false, false, false, :now, :now)"
            ),
            {"id": "u" * 32, "now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO sessions (id, user_id, rotation_key, created_at, authenticated_at,"
                " last_seen_at, expires_at, ends_at) VALUES"
                " (:id, :user_id, :key, :now, :now, :now, :later, :later)"
            ),
            {"id": "s" * 32, "user_id": "u" * 32, "key": bytes(32), "now": now, "later": later},
        )
        await conn.execute(
            text(
                "INSERT INTO refresh_tokens (id, session_id, token_hash, generation, created_at)"
                " VALUES (:id, :session_id, :hash, 0, :now)"
            ),
            {
                "id": "t" * 32,
                "session_id": "s" * 32,
                "hash": opaque_tokens.hash_token(token),
                "now": now,
            },
        )
        await conn.execute(
            insert(audit_events).values(
                id="e" * 32,
                seq=1,
                prev_hash=GENESIS,
                hash=digest,
                **{**event, "detail": "{}"},
            )
        )
        await conn.execute(
            text("UPDATE audit_chain SET last_seq = 1, last_hash = :h"), {"h": digest}
        )


async def test_sessions_and_the_audit_chain_of_revision_0001_survive_the_upgrade(
    backend: str, database_url: str
) -> None:
    token = opaque_tokens.new_token()
    database = Database(database_url)
    try:
        await _write_revision_0001_data(database, backend, token)
    finally:
        await database.dispose()

    async with serving(settings_for(database_url)) as (keyturn, client):  # migrates to head
        refreshed = await client.post("/auth/refresh", json={"refresh_token": token})
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["session_id"] == "s" * 32
        again = await client.post(
            "/auth/refresh", json={"refresh_token": refreshed.json()["refresh_token"]}
        )
        assert again.status_code == 200, again.text
        report = await keyturn.audit.verify()
        assert report.is_intact
        assert report.events_checked == 3  # the old event and both refreshes


async def test_new_sessions_carry_the_shared_secret_for_the_previous_release(
    database_url: str,
) -> None:
    """During a rolling deploy the previous release derives a successor from the session's
    `rotation_key`: it must give the token this release answers with."""
    async with serving(settings_for(database_url)) as (keyturn, client):
        registered = await client.post(
            "/auth/register", json={"email": "ada@example.com", "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        token = registered.json()["refresh_token"]
        async with keyturn.database.engine.connect() as conn:
            (secret,) = (await conn.execute(text("SELECT value FROM server_secrets"))).one()
            (key,) = (await conn.execute(text("SELECT rotation_key FROM sessions"))).one()
        assert bytes(key) == bytes(secret)
        refreshed = await client.post("/auth/refresh", json={"refresh_token": token})
        assert refreshed.json()["refresh_token"] == opaque_tokens.derive_successor(key, token)


def test_readiness_knows_every_revision_alembic_has() -> None:
    """Readiness compares against `REVISIONS` so that a serving process never loads Alembic."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate._config())
    assert tuple(s.revision for s in reversed(list(script.walk_revisions()))) == migrate.REVISIONS
    assert script.get_current_head() == migrate.head_revision()


async def test_a_retry_of_a_rotation_the_previous_release_made_gets_its_successor(
    database_url: str,
) -> None:
    """During a rolling deploy an old instance rotates a token of a session it created (its
    own key); the client's retry reaches a new instance within the grace period."""
    async with serving(settings_for(database_url)) as (keyturn, client):
        registered = await client.post(
            "/auth/register", json={"email": "ada@example.com", "password": PASSWORD}
        )
        token, session_id = registered.json()["refresh_token"], registered.json()["session_id"]
        old_key = bytes(range(32))
        old_successor = opaque_tokens.derive_successor(old_key, token)
        now = keyturn.clock()
        async with keyturn.database.write() as conn:  # what the old release wrote
            await conn.execute(update(sessions).values(rotation_key=old_key))
            await conn.execute(update(refresh_tokens).values(rotated_at=now))
            await session_store.insert_refresh_token(
                conn, session_id, opaque_tokens.hash_token(old_successor), generation=1, now=now
            )
        retried = await client.post("/auth/refresh", json={"refresh_token": token})
        assert retried.status_code == 200, retried.text
        assert retried.json()["refresh_token"] == old_successor
        onward = await client.post("/auth/refresh", json={"refresh_token": old_successor})
        assert onward.status_code == 200, onward.text


async def test_sqlite_migrates_every_revision_in_one_transaction(tmp_path: Path) -> None:
    """Alembic does not count SQLite's DDL as transactional and commits after each revision,
    so two commands started together on a new file took turns revision by revision, and one
    read a revision the other had already moved past (`keyturn users promote` beside
    `keyturn users create` failed so, now and then). In one transaction, begun with SQLite's
    write lock, the second waits for every revision and finds the schema current."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}")
    commits: list[object] = []
    event.listen(database.engine.sync_engine, "commit", commits.append)
    try:
        await migrate.upgrade(database)
        assert await migrate.current_revision(database) == migrate.head_revision()
        assert len(commits) == 1
        await migrate.upgrade(database)  # current already: nothing to do, and no error
    finally:
        await database.dispose()
