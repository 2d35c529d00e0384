"""Refreshes that arrive together: each gets the answer it would get alone (SQLite and
PostgreSQL), and on PostgreSQL the ones of one turn of the event loop share one statement."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import httpx
import pytest

from keyturn import Keyturn
from keyturn.errors import InvalidRefreshToken, RefreshTokenReused
from keyturn.services.context import ClientInfo
from keyturn.services.sessions import IssuedTokens
from keyturn.storage import audit as audit_store
from keyturn.storage import sessions as session_store
from tests.actions import bearer, register
from tests.databases import CountedWrites, sqlite_file
from tests.instances import client_of

CLIENT = ClientInfo(ip="203.0.113.9", user_agent="batch-test")
UNKNOWN = "unknown-token-unknown-token-unknown-token-0000"


async def _refresh_all(keyturn: Keyturn, tokens: list[str]) -> list[Any]:
    return await asyncio.gather(
        *(keyturn.sessions.refresh(token, CLIENT) for token in tokens), return_exceptions=True
    )


async def test_refreshes_made_together_each_get_their_own_answer(
    keyturn: Keyturn, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = [await register(client, f"user{i}@example.com") for i in range(5)]
    ended = people.pop()
    assert (await client.post("/auth/logout", headers=bearer(ended))).status_code == 204
    counting = CountedWrites(keyturn.database, monkeypatch)
    live = [p["refresh_token"] for p in people]
    answers = await _refresh_all(keyturn, [*live, live[0], ended["refresh_token"], UNKNOWN])

    *rotated, again, of_ended, unknown = answers
    assert [a.user.email for a in rotated] == [f"user{i}@example.com" for i in range(4)]
    assert len({a.refresh_token for a in rotated}) == 4
    assert again.refresh_token == rotated[0].refresh_token  # as a retry in the grace period
    assert isinstance(of_ended, InvalidRefreshToken)
    assert isinstance(unknown, InvalidRefreshToken)
    if keyturn.database.postgres is not None:
        # One statement: six distinct tokens.
        assert [len(tokens) for tokens, *_ in counting.statements] == [6]
    # Every successor works, and a presented token, older than that now, is reuse.
    followed = await _refresh_all(keyturn, [a.refresh_token for a in rotated])
    assert [f.session.id for f in followed] == [a.session.id for a in rotated]
    with pytest.raises(RefreshTokenReused):
        await keyturn.sessions.refresh(live[1], CLIENT)


async def test_each_refresh_of_a_batch_gets_an_access_token_of_its_own_for_its_session(
    keyturn: Keyturn, client: httpx.AsyncClient
) -> None:
    """The batch's access tokens are signed while its commit is flushed; a second request with
    the same refresh token (a retry in the grace period) still gets one of its own."""
    people = [await register(client, f"user{i}@example.com") for i in range(3)]
    tokens = [p["refresh_token"] for p in people]
    answers = await _refresh_all(keyturn, [*tokens, tokens[0]])

    *rotated, again = answers
    assert again.refresh_token == rotated[0].refresh_token
    assert len({a.access_token for a in answers}) == 4
    for answer in answers:
        claims = keyturn.sessions.codec.verify(answer.access_token, now=keyturn.clock())
        assert (claims.session_id, claims.subject) == (answer.session.id, answer.user.id)
        me = await client.get("/me", headers={"Authorization": f"Bearer {answer.access_token}"})
        assert me.json()["email"] == answer.user.email


async def test_each_refresh_of_a_batch_writes_one_event_for_its_own_session(
    keyturn: Keyturn, client: httpx.AsyncClient
) -> None:
    people = [await register(client, f"user{i}@example.com") for i in range(3)]
    tokens = [p["refresh_token"] for p in people]
    answers = await _refresh_all(keyturn, [*tokens, tokens[2]])
    await keyturn.audit.seal()
    async with keyturn.database.read() as conn:
        events = await audit_store.list_events(conn, limit=50, type="session.refreshed")
    assert sorted((e.user_id, e.session_id) for e in events) == sorted(
        (a.user.id, a.session.id) for a in answers[:3]
    )
    assert all(e.ip == CLIENT.ip and e.user_agent == CLIENT.user_agent for e in events)


async def test_a_refresh_that_fails_its_batch_fails_alone(
    keyturn: Keyturn, client: httpx.AsyncClient
) -> None:
    if keyturn.database.postgres is None:
        pytest.skip("SQLite does not enforce the column's length, so nothing fails there")
    people = [await register(client, f"user{i}@example.com") for i in range(3)]
    # An address longer than its column (a client can never send one: a test-only way to make
    # one refresh's writes fail while the others' succeed).
    clients = [CLIENT, ClientInfo(ip="2001:db8::" + "f" * 80), CLIENT]
    answers = await asyncio.gather(
        *(
            keyturn.sessions.refresh(p["refresh_token"], c)
            for p, c in zip(people, clients, strict=True)
        ),
        return_exceptions=True,
    )
    first, failed, last = answers
    assert isinstance(first, IssuedTokens)
    assert first.user.email == "user0@example.com"
    assert isinstance(last, IssuedTokens)
    assert last.user.email == "user2@example.com"
    assert isinstance(failed, Exception)
    # Its token was not spent: with a sane address it rotates.
    retried = await keyturn.sessions.refresh(people[1]["refresh_token"], CLIENT)
    assert retried.user.email == "user1@example.com"


async def test_sqlite_rotates_through_objects_of_the_writer_s_connection_alone(
    sqlite_keyturn: Keyturn,
) -> None:
    """The view and trigger a SQLite batch rotates through are TEMP: the database file, which
    other processes and releases share, never holds them."""
    async with client_of(sqlite_keyturn) as client:
        ada = await register(client, "ada@example.com")
        rotated = await sqlite_keyturn.sessions.refresh(ada["refresh_token"], CLIENT)
    assert rotated.user.email == "ada@example.com"
    with sqlite3.connect(sqlite_file(sqlite_keyturn.settings.database_url)) as other:
        names = [name for (name,) in other.execute("SELECT name FROM sqlite_master")]
    assert "refresh_tokens" in names
    assert not [name for name in names if name.startswith("keyturn_")]


async def test_sqlite_rotates_after_a_batch_whose_rollback_took_the_trigger_with_it(
    sqlite_keyturn: Keyturn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer connection's first batch creates the view and trigger inside its
    transaction: if that transaction rolls back, they are gone, and the next batch makes them
    again."""

    class Refused(Exception):
        pass

    async def refuse(*_args: Any) -> list[str]:
        raise Refused()

    async with client_of(sqlite_keyturn) as client:
        ada = await register(client, "ada@example.com")
    with monkeypatch.context() as patched:
        patched.setattr(session_store, "append_events", refuse)
        with pytest.raises(Refused):
            await sqlite_keyturn.sessions.refresh(ada["refresh_token"], CLIENT)
    rotated = await sqlite_keyturn.sessions.refresh(ada["refresh_token"], CLIENT)  # unspent
    assert rotated.user.email == "ada@example.com"
