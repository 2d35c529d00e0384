"""The audit trail: what is recorded, who may read it, and the hash chain that proves it intact."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from keyturn import Keyturn, Settings
from keyturn.errors import AuditLogBroken
from keyturn.services.audit import EventType, event
from keyturn.services.context import ClientInfo
from keyturn.storage import audit as audit_store
from keyturn.storage import users as user_store
from tests import instances
from tests.actions import PASSWORD, bearer, login, register
from tests.clock import FakeClock
from tests.conftest import settings_for
from tests.databases import postgres_admin_url, temporary_database
from tests.server_process import KEYTURN, running_server, server_env

NEW_PASSWORD = "violet staple horse correct"
NEW_EMAIL = "lovelace@example.com"
WRONG_PASSWORD = "not the password at all"
ADMIN_PASSWORD = "admin horse battery staple"
AGENT = "keyturn-audit-tests/1.0"
CLIENT_IP = "203.0.113.7"  # the `client` fixture's socket peer

# CONTRACT section 5: the event types keyturn must record.
CONTRACT_TYPES = {
    "user.registered",
    "login.succeeded",
    "login.failed",
    "session.refreshed",
    "session.revoked",
    "refresh_token.reused",
    "password.changed",
    "profile.updated",
    "email.changed",
    "reauthenticated",
    "user.deleted",
    "user.disabled",
}


# --- helpers -------------------------------------------------------------------------------


async def keyturn_cli(database_url: str, *args: str) -> tuple[int, str]:
    """Run `.venv/bin/keyturn` against the test database: (exit status, stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        KEYTURN,
        *args,
        env=server_env(database_url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


@asynccontextmanager
async def serving(
    settings: Settings, clock: FakeClock
) -> AsyncIterator[tuple[Keyturn, AsyncClient]]:
    """Another Keyturn and a client for it, like the `keyturn` and `client` fixtures."""
    async with instances.serving(settings, clock, CLIENT_IP) as pair:
        yield pair


async def sql(keyturn: Keyturn, statement: str, **params: Any) -> list[Any]:
    """Run SQL directly against the database, as someone with database access could."""
    async with keyturn.database.engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        return list(result.all()) if result.returns_rows else []


async def chain(keyturn: Keyturn) -> list[tuple[str, int]]:
    """(id, seq) of every stored event, in chain order (sealed first, as the server does within
    moments of each commit)."""
    await keyturn.audit.seal()
    rows = await sql(keyturn, "SELECT id, seq FROM audit_events ORDER BY seq")
    return [(row[0], int(row[1])) for row in rows]


async def head_seq(keyturn: Keyturn) -> int:
    await keyturn.audit.seal()
    return int((await sql(keyturn, "SELECT last_seq FROM audit_chain"))[0][0])


async def events_page(
    client: AsyncClient, path: str, tokens: dict[str, Any], **params: Any
) -> dict[str, Any]:
    response = await client.get(path, headers=bearer(tokens), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_events(
    client: AsyncClient, path: str, tokens: dict[str, Any], **params: Any
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await events_page(
            client, path, tokens, limit=200, **params, **({"cursor": cursor} if cursor else {})
        )
        events += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            return events


async def make_admin(client: AsyncClient, keyturn: Keyturn) -> dict[str, Any]:
    await keyturn.accounts.create_user("root@example.com", ADMIN_PASSWORD, is_admin=True)
    return await login(client, email="root@example.com", password=ADMIN_PASSWORD)


async def some_history(client: AsyncClient, clock: FakeClock) -> None:
    """A few events of several kinds, a second apart."""
    tokens = await register(client)
    for _ in range(2):
        clock.advance(1)
        tokens = await login(client)
    clock.advance(1)
    await client.post("/auth/login", json={"email": "ada@example.com", "password": WRONG_PASSWORD})
    clock.advance(1)
    await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    clock.advance(1)
    await client.patch("/me", headers=bearer(tokens), json={"name": "Ada"})


async def some_history_of(client: AsyncClient, clock: FakeClock, email: str) -> None:
    tokens = await register(client, email=email)
    clock.advance(1)
    await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})


# --- what is recorded ----------------------------------------------------------------------


async def test_every_contract_event_type_is_recorded_with_who_when_and_where(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock
) -> None:
    client.headers["User-Agent"] = AGENT
    started = clock()
    admin = await make_admin(client, keyturn)
    secrets = {PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, ADMIN_PASSWORD}

    def keep(*responses: dict[str, Any]) -> None:
        for body in responses:
            secrets.update(body[k] for k in ("access_token", "refresh_token") if k in body)

    async def step(method: str, path: str, tokens: dict[str, Any] | None, **kw: Any) -> Any:
        clock.advance(1)
        headers = bearer(tokens) if tokens else {}
        response = await client.request(method, path, headers=headers, **kw)
        assert response.status_code < 500, response.text
        if response.content and response.headers["content-type"] == "application/json":
            keep(response.json())
        return response

    keep(admin)
    main = await register(client)
    user_id = main["user"]["id"]
    keep(main)

    def credentials(password: str) -> dict[str, str]:
        return {"email": "ada@example.com", "password": password}

    # login.succeeded, login.failed, session.refreshed; then theft of a rotated refresh token.
    stolen = (await step("POST", "/auth/login", None, json=credentials(PASSWORD))).json()
    failed = await step("POST", "/auth/login", None, json=credentials(WRONG_PASSWORD))
    assert failed.status_code == 401
    old_refresh = {"refresh_token": stolen["refresh_token"]}
    assert (await step("POST", "/auth/refresh", None, json=old_refresh)).status_code == 200
    clock.advance(60)  # past KEYTURN_REFRESH_REUSE_GRACE
    reused = await step("POST", "/auth/refresh", None, json=old_refresh)
    assert reused.json()["code"] == "refresh_token_reused"
    # profile.updated, reauthenticated, email.changed.
    assert (await step("PATCH", "/me", main, json={"name": "Ada"})).status_code == 200
    reauthenticated = await step("POST", "/auth/reauthenticate", main, json={"password": PASSWORD})
    assert reauthenticated.status_code == 204
    email = await step("POST", "/me/email", main, json={"new_email": "Lovelace@example.com"})
    assert email.status_code == 200
    # session.revoked for each reason a user or an administrator can cause.
    logged_out = await login(client, email=NEW_EMAIL)
    keep(logged_out)
    assert (await step("POST", "/auth/logout", logged_out)).status_code == 204
    by_user = await login(client, email=NEW_EMAIL)
    keep(by_user)
    assert (await step("DELETE", f"/me/sessions/{by_user['session_id']}", main)).status_code == 204
    by_password = await login(client, email=NEW_EMAIL)
    keep(by_password)
    change = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert (await step("POST", "/me/password", main, json=change)).status_code == 204
    by_admin = await login(client, email=NEW_EMAIL, password=NEW_PASSWORD)
    keep(by_admin)
    assert (await step("DELETE", f"/admin/users/{user_id}/sessions", admin)).status_code == 204
    by_disable = await login(client, email=NEW_EMAIL, password=NEW_PASSWORD)
    keep(by_disable)
    assert (await step("POST", f"/admin/users/{user_id}/disable", admin)).status_code == 200
    assert (await step("POST", f"/admin/users/{user_id}/enable", admin)).status_code == 200
    last = await login(client, email=NEW_EMAIL, password=NEW_PASSWORD)
    keep(last)
    secrets.update(r[0] for r in await sql(keyturn, "SELECT password_hash FROM users"))
    secrets.update(r[0] for r in await sql(keyturn, "SELECT token_hash FROM refresh_tokens"))
    assert (await step("DELETE", "/me", last)).status_code == 204

    events = await all_events(client, "/admin/audit", admin, user_id=user_id)
    assert {e["type"] for e in events} >= CONTRACT_TYPES
    for item in events:
        assert item["user_id"] == user_id
        assert item["ip"] == CLIENT_IP
        assert item["user_agent"] == AGENT
        occurred_at = datetime.fromisoformat(item["occurred_at"])
        assert occurred_at.utcoffset() == timedelta(0)
        assert started <= occurred_at <= clock()
        # Every event happened in a session, except a login that opened none.
        assert (item["session_id"] is None) == (item["type"] == "login.failed"), item

    def of_type(kind: str) -> list[dict[str, Any]]:
        return [e for e in events if e["type"] == kind]

    assert [e["detail"]["reason"] for e in of_type("login.failed")] == ["invalid_password"]
    assert {e["session_id"] for e in of_type("session.refreshed")} == {stolen["session_id"]}
    assert {e["session_id"] for e in of_type("refresh_token.reused")} == {stolen["session_id"]}
    assert {e["session_id"] for e in of_type("reauthenticated")} == {main["session_id"]}
    assert {e["session_id"] for e in of_type("password.changed")} == {main["session_id"]}
    (changed,) = of_type("email.changed")
    assert changed["detail"] == {"previous_email": "ada@example.com", "new_email": NEW_EMAIL}
    assert {e["session_id"] for e in of_type("user.disabled")} == {admin["session_id"]}
    assert {e["session_id"] for e in of_type("user.deleted")} == {last["session_id"]}
    reasons = {e["session_id"]: e["detail"]["reason"] for e in of_type("session.revoked")}
    assert reasons == {
        stolen["session_id"]: "refresh_token_reused",
        logged_out["session_id"]: "logout",
        by_user["session_id"]: "user",
        by_password["session_id"]: "password_changed",
        main["session_id"]: "admin",
        by_admin["session_id"]: "admin",
        by_disable["session_id"]: "account_disabled",
        last["session_id"]: "account_deleted",
    }

    # No password, token or hash of one, in the API's events nor in the stored rows.
    served = json.dumps(await all_events(client, "/admin/audit", admin))
    stored = repr(await sql(keyturn, "SELECT * FROM audit_events"))
    secrets.discard("!")  # the deleted account's unusable-password marker
    assert len(secrets) > 20
    for secret in secrets:
        assert secret not in served
        assert secret not in stored


# --- GET /me/audit -------------------------------------------------------------------------


async def test_my_audit_shows_only_my_events_newest_first(
    client: AsyncClient, clock: FakeClock
) -> None:
    ada = await register(client)
    bob = await register(client, email="bob@example.com")
    for email in ("ada@example.com", "bob@example.com") * 3:
        clock.advance(1)
        await login(client, email=email)
    clock.advance(1)
    await client.post("/auth/login", json={"email": "bob@example.com", "password": WRONG_PASSWORD})

    mine = await all_events(client, "/me/audit", ada)
    assert {e["user_id"] for e in mine} == {ada["user"]["id"]}
    assert [e["type"] for e in mine] == ["login.succeeded"] * 3 + ["user.registered"]
    times = [e["occurred_at"] for e in mine]
    assert times == sorted(times, reverse=True)
    assert len(set(times)) == len(times)
    bobs = await all_events(client, "/me/audit", bob)
    assert {e["user_id"] for e in bobs} == {bob["user"]["id"]}
    assert bobs[0]["type"] == "login.failed"
    assert not {e["id"] for e in mine} & {e["id"] for e in bobs}


async def test_my_audit_pages_stay_correct_while_new_events_arrive(
    client: AsyncClient, clock: FakeClock
) -> None:
    ada = await register(client)
    for _ in range(6):
        clock.advance(1)
        await login(client)
    snapshot = [e["id"] for e in await all_events(client, "/me/audit", ada)]
    assert len(snapshot) == 7

    seen: list[str] = []
    page = await events_page(client, "/me/audit", ada, limit=2)
    while True:
        assert len(page["events"]) <= 2
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        # New events, mine and someone else's, land between the pages.
        clock.advance(1)
        await login(client)
        await register(client, email=f"user{len(seen)}@example.com")
        page = await events_page(client, "/me/audit", ada, limit=2, cursor=page["next_cursor"])
    assert seen == snapshot

    newest = await events_page(client, "/me/audit", ada, limit=3)
    assert [e["type"] for e in newest["events"]] == ["login.succeeded"] * 3
    assert newest["events"][0]["id"] not in snapshot


async def test_my_audit_needs_a_session_and_a_valid_cursor(client: AsyncClient) -> None:
    ada = await register(client)
    assert (await client.get("/me/audit")).status_code == 401
    bad = await client.get("/me/audit", headers=bearer(ada), params={"cursor": "not!a cursor"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_request"


async def test_an_out_of_range_cursor_is_an_invalid_request(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    ada = await register(client)
    admin = await make_admin(client, keyturn)
    for raw in ("99999999999999999999999", "9223372036854775808", "-5"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        for path, tokens in (("/me/audit", ada), ("/admin/audit", admin)):
            response = await client.get(path, headers=bearer(tokens), params={"cursor": cursor})
            assert response.status_code == 422, (raw, path, response.text)
            assert response.json()["code"] == "invalid_request"


# --- GET /admin/audit ----------------------------------------------------------------------


async def test_admin_audit_filters_by_user_and_type(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock
) -> None:
    admin = await make_admin(client, keyturn)
    ada = await register(client)
    bob = await register(client, email="bob@example.com")
    for email in ("ada@example.com", "bob@example.com", "ada@example.com"):
        clock.advance(1)
        await login(client, email=email)
    await client.post("/auth/login", json={"email": "ada@example.com", "password": WRONG_PASSWORD})

    everything = await all_events(client, "/admin/audit", admin)
    assert {ada["user"]["id"], bob["user"]["id"]} <= {e["user_id"] for e in everything}

    adas = await all_events(client, "/admin/audit", admin, user_id=ada["user"]["id"])
    assert {e["user_id"] for e in adas} == {ada["user"]["id"]}
    assert adas == [e for e in everything if e["user_id"] == ada["user"]["id"]]

    logins = await all_events(client, "/admin/audit", admin, type="login.succeeded")
    assert logins == [e for e in everything if e["type"] == "login.succeeded"]
    assert len(logins) == 4  # three users' logins and the admin's own

    both = await all_events(
        client, "/admin/audit", admin, user_id=ada["user"]["id"], type="login.succeeded"
    )
    assert len(both) == 2
    assert {(e["user_id"], e["type"]) for e in both} == {(ada["user"]["id"], "login.succeeded")}

    # Filtered pages chain together without gaps or repeats.
    paged: list[dict[str, Any]] = []
    page = await events_page(client, "/admin/audit", admin, user_id=ada["user"]["id"], limit=1)
    while True:
        paged += page["events"]
        if page["next_cursor"] is None:
            break
        page = await events_page(
            client,
            "/admin/audit",
            admin,
            user_id=ada["user"]["id"],
            limit=1,
            cursor=page["next_cursor"],
        )
    assert paged == adas


async def test_admin_audit_is_for_administrators_only(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    ada = await register(client)
    forbidden = await client.get("/admin/audit", headers=bearer(ada))
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "forbidden"
    assert "events" not in forbidden.json()
    filtered = await client.get(
        "/admin/audit", headers=bearer(ada), params={"user_id": ada["user"]["id"]}
    )
    assert filtered.status_code == 403
    assert (await client.get("/admin/audit")).status_code == 401
    admin = await make_admin(client, keyturn)
    bad = await client.get("/admin/audit", headers=bearer(admin), params={"user_id": "x' OR 1=1"})
    assert bad.status_code == 422


# --- tamper evidence -----------------------------------------------------------------------

Stored = list[tuple[str, int]]


async def _edit_detail(keyturn: Keyturn, stored: Stored) -> str:
    target, seq = stored[2]
    await sql(keyturn, "UPDATE audit_events SET detail = :d WHERE seq = :s", d='{"x": 1}', s=seq)
    return target


async def _delete_middle(keyturn: Keyturn, stored: Stored) -> str:
    await sql(keyturn, "DELETE FROM audit_events WHERE seq = :s", s=stored[2][1])
    return stored[3][0]  # the first event that no longer fits: its predecessor is gone


async def _delete_last(keyturn: Keyturn, stored: Stored) -> str:
    await sql(keyturn, "DELETE FROM audit_events WHERE seq = :s", s=stored[-1][1])
    # Its id went with it; what remains of it is its place at the chain's head.
    return f"seq {stored[-1][1]}"


async def _swap(keyturn: Keyturn, stored: Stored) -> str:
    (first, a), (second, b) = stored[2], stored[3]
    await sql(keyturn, "UPDATE audit_events SET seq = -1 WHERE id = :i", i=first)
    await sql(keyturn, "UPDATE audit_events SET seq = :s WHERE id = :i", s=a, i=second)
    await sql(keyturn, "UPDATE audit_events SET seq = :s WHERE id = :i", s=b, i=first)
    return second  # now in first's place, linked to the wrong predecessor


TAMPERINGS: dict[str, Callable[[Keyturn, Stored], Awaitable[str]]] = {
    "edit-detail": _edit_detail,
    "delete-middle": _delete_middle,
    "delete-last": _delete_last,
    "swap": _swap,
}


async def test_audit_verify_fails_on_each_kind_of_tampering_and_names_the_first_broken_event(
    backend: str,
    settings: Settings,
    keyturn: Keyturn,
    client: AsyncClient,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """One database per kind, then `keyturn audit verify` on all of them at once (it is slow)."""
    cases: list[tuple[str, str, str]] = []
    async with AsyncExitStack() as stack:
        for i, (kind, tamper) in enumerate(TAMPERINGS.items()):
            url = settings.database_url
            if i > 0:  # the fixtures' database serves the first kind
                url = await stack.enter_async_context(temporary_database(backend, tmp_path / kind))
                keyturn, client = await stack.enter_async_context(
                    serving(settings.with_overrides(database_url=url), clock)
                )
            await some_history(client, clock)
            stored = await chain(keyturn)
            assert [seq for _, seq in stored] == list(range(1, len(stored) + 1))
            assert (await keyturn.audit.verify()).is_intact
            cases.append((kind, url, await tamper(keyturn, stored)))
        results = await asyncio.gather(
            *(keyturn_cli(url, "audit", "verify") for _, url, _ in cases)
        )
    for (kind, _, broken), (status, output) in zip(cases, results, strict=True):
        assert status != 0, (kind, output)
        assert "audit log broken at event" in output, (kind, output)
        assert broken in output, (kind, output)


async def test_changing_any_column_of_an_event_breaks_the_chain_at_that_event(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock, backend: str
) -> None:
    await some_history(client, clock)
    target, seq = (await chain(keyturn))[-2]  # a session.refreshed event: no field is empty
    later = (
        "datetime(occurred_at, '+1 second')"
        if backend == "sqlite"
        else ("occurred_at + interval '1 second'")
    )
    edits = {
        "type": "'login.succeeded'",
        "occurred_at": later,
        "user_id": "'0123456789abcdef0123456789abcdef'",
        "session_id": "NULL",
        "ip": "'198.51.100.1'",
        "user_agent": "'forged'",
        "detail": '\'{"reason": "forged"}\'',
        "prev_hash": "hash",
        "hash": "prev_hash",
    }
    for column, value in edits.items():
        (original,) = await sql(keyturn, f"SELECT {column} FROM audit_events WHERE seq = :s", s=seq)
        await sql(keyturn, f"UPDATE audit_events SET {column} = {value} WHERE seq = :s", s=seq)
        report = await keyturn.audit.verify()
        assert report.broken is not None, column
        assert (report.broken.event_id, report.broken.seq) == (target, seq), column
        await sql(
            keyturn, f"UPDATE audit_events SET {column} = :v WHERE seq = :s", v=original[0], s=seq
        )
        assert (await keyturn.audit.verify()).is_intact, column


async def test_audit_verify_is_not_fooled_by_events_appended_while_it_runs(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    """A live server keeps appending; a walk must not mistake new events for a broken head."""
    tokens = [await register(client, email=f"user{i}@example.com") for i in range(4)]
    writing = True

    async def keep_refreshing(first: dict[str, Any]) -> int:
        token, count = first["refresh_token"], 0
        while writing:
            response = await client.post("/auth/refresh", json={"refresh_token": token})
            assert response.status_code == 200, response.text
            token, count = response.json()["refresh_token"], count + 1
        return count

    writers = [asyncio.create_task(keep_refreshing(t)) for t in tokens]
    try:
        reports = [await keyturn.audit.verify() for _ in range(20)]
    finally:
        writing = False
        written = sum(await asyncio.gather(*writers))
    assert [r.broken for r in reports] == [None] * len(reports)
    assert written > 0
    assert reports[-1].events_checked > reports[0].events_checked


async def test_audit_prune_removes_old_events_and_leaves_the_rest_verifiable(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock, database_url: str
) -> None:
    await some_history(client, clock)
    old = await chain(keyturn)
    clock.advance(3 * 86400)
    cutoff = clock()
    clock.advance(1)
    await some_history_of(client, clock, "bob@example.com")
    kept = (await chain(keyturn))[len(old) :]

    status, output = await keyturn_cli(
        database_url, "audit", "prune", "--before", cutoff.isoformat()
    )
    assert status == 0, output
    assert f"removed {len(old)} audit events" in output
    assert await chain(keyturn) == kept
    status, output = await keyturn_cli(database_url, "audit", "verify")
    assert status == 0, output
    assert f"audit log intact: {len(kept)} events verified" in output

    # The chain goes on from the anchor, and pruning again is a no-op.
    await login(client, email="bob@example.com")
    assert (await keyturn.audit.verify()).is_intact
    assert await keyturn.audit.prune(cutoff) == 0
    assert (await chain(keyturn))[0] == kept[0]

    # The first kept event is still checked against the anchor.
    first = kept[0][0]
    await sql(keyturn, "UPDATE audit_events SET ip = '198.51.100.1' WHERE id = :i", i=first)
    report = await keyturn.audit.verify()
    assert report.broken is not None
    assert report.broken.event_id == first


async def test_audit_prune_refuses_a_broken_chain_and_removes_nothing(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock, database_url: str
) -> None:
    await some_history(client, clock)
    before = await chain(keyturn)
    tampered = before[1][0]
    await sql(keyturn, "UPDATE audit_events SET ip = '198.51.100.1' WHERE id = :i", i=tampered)
    clock.advance(1)

    # Pruning past the changed event would delete it and re-anchor the chain after it.
    status, output = await keyturn_cli(
        database_url, "audit", "prune", "--before", clock().isoformat()
    )
    assert status == 1
    assert tampered in output
    assert "nothing was pruned" in output
    with pytest.raises(AuditLogBroken):
        await keyturn.audit.prune(clock())
    assert await chain(keyturn) == before
    assert (await keyturn.audit.verify()).broken.event_id == tampered  # type: ignore[union-attr]


async def test_pruning_everything_keeps_the_chain_verifiable(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock
) -> None:
    await some_history(client, clock)
    total = len(await chain(keyturn))
    clock.advance(1)
    assert await keyturn.audit.prune(clock()) == total
    assert await chain(keyturn) == []
    assert (await keyturn.audit.verify()).is_intact
    await login(client)
    assert [seq for _, seq in await chain(keyturn)] == [total + 1]
    report = await keyturn.audit.verify()
    assert report.is_intact
    assert report.events_checked == 1


# --- one transaction: a change and its event together, or neither ---------------------------


async def test_a_failure_after_appending_an_event_persists_neither_change_nor_event(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    ada = await register(client, name="Ada")
    user_id = ada["user"]["id"]
    before, last_seq = await chain(keyturn), await head_seq(keyturn)

    appended: list[str] = []

    async def crash_after_appending() -> None:
        async with keyturn.database.write() as conn:
            await user_store.update_user(conn, user_id, name="Mallory")
            written = await audit_store.append_events(
                conn,
                [
                    event(
                        EventType.PROFILE_UPDATED,
                        now=keyturn.clock(),
                        client=ClientInfo(),
                        user_id=user_id,
                        fields=["name"],
                    )
                ],
            )
            appended.extend(written)
            raise RuntimeError("crash between the event and the commit")

    with pytest.raises(RuntimeError, match="crash"):
        await crash_after_appending()
    assert len(appended) == 1

    assert (await client.get("/me", headers=bearer(ada))).json()["name"] == "Ada"
    assert await chain(keyturn) == before
    assert await head_seq(keyturn) == last_seq
    assert appended[0] not in {event_id for event_id, _ in await chain(keyturn)}
    # The next event takes the number the rolled-back one would have had.
    await client.patch("/me", headers=bearer(ada), json={"name": "Countess"})
    assert (await chain(keyturn))[-1][1] == last_seq + 1
    assert (await keyturn.audit.verify()).is_intact


async def test_a_database_error_midway_through_a_password_change_rolls_all_of_it_back(
    client: AsyncClient, keyturn: Keyturn, backend: str
) -> None:
    """The password and its event are written, then revoking the other sessions fails."""
    ada = await register(client)
    other = await login(client)
    before, last_seq = await chain(keyturn), await head_seq(keyturn)
    if backend == "sqlite":
        await sql(
            keyturn,
            "CREATE TRIGGER refuse_revocation BEFORE UPDATE ON sessions"
            " WHEN NEW.revoke_reason = 'password_changed'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
    else:
        await sql(
            keyturn,
            "CREATE FUNCTION refuse_revocation() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
        )
        await sql(
            keyturn,
            "CREATE TRIGGER refuse_revocation BEFORE UPDATE ON sessions FOR EACH ROW"
            " WHEN (NEW.revoke_reason = 'password_changed') EXECUTE FUNCTION refuse_revocation()",
        )

    principal = await keyturn.sessions.authenticate(ada["access_token"])
    with pytest.raises(DBAPIError, match="refused"):
        await keyturn.accounts.change_password(principal, PASSWORD, NEW_PASSWORD, ClientInfo())

    assert await chain(keyturn) == before
    assert await head_seq(keyturn) == last_seq
    await login(client, password=PASSWORD)
    refused = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": NEW_PASSWORD}
    )
    assert refused.status_code == 401
    assert (await client.get("/me", headers=bearer(other))).status_code == 200
    assert (await keyturn.audit.verify()).is_intact


async def test_an_email_change_to_a_taken_address_records_no_event(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    ada = await register(client)
    await register(client, email="bob@example.com")
    before = await chain(keyturn)
    response = await client.post(
        "/me/email", headers=bearer(ada), json={"new_email": "bob@example.com"}
    )
    assert response.status_code == 409
    assert await chain(keyturn) == before
    rows = await sql(keyturn, "SELECT email FROM users WHERE id = :i", i=ada["user"]["id"])
    assert rows[0][0] == "ada@example.com"
    assert (await keyturn.audit.verify()).is_intact


# --- many writers, two instances -----------------------------------------------------------


@pytest.mark.server
async def test_two_servers_writing_concurrently_keep_the_chain_valid(tmp_path: Path) -> None:
    """Two `keyturn serve` instances on one PostgreSQL, many logins and refreshes on both."""
    if not postgres_admin_url():
        pytest.skip("KEYTURN_TEST_POSTGRES_URL is not set")
    users = [f"user{i}@example.com" for i in range(4)]
    sessions_per_user, refreshes_per_session = 2, 8
    async with temporary_database("postgresql", tmp_path) as database_url:
        env = server_env(database_url)
        with ExitStack() as servers:
            # Started side by side: their migrations and first key queue on advisory locks.
            bases = await asyncio.gather(
                asyncio.to_thread(servers.enter_context, running_server(env)),
                asyncio.to_thread(servers.enter_context, running_server(env)),
            )
            async with httpx.AsyncClient(timeout=60) as http:

                async def post(k: int, path: str, body: dict[str, str]) -> dict[str, Any]:
                    response = await http.post(f"{bases[k % 2]}{path}", json=body)
                    assert response.status_code < 300, response.text
                    answer: dict[str, Any] = response.json()
                    return answer

                async def session(k: int, email: str) -> None:
                    credentials = {"email": email, "password": PASSWORD}
                    token = (await post(k, "/auth/login", credentials))["refresh_token"]
                    for j in range(refreshes_per_session):
                        body = {"refresh_token": token}
                        token = (await post(k + j + 1, "/auth/refresh", body))["refresh_token"]

                async def journey(i: int, email: str) -> None:
                    await post(i, "/auth/register", {"email": email, "password": PASSWORD})
                    await asyncio.gather(*(session(i + k, email) for k in range(sessions_per_user)))

                await asyncio.gather(*(journey(i, email) for i, email in enumerate(users)))

        status, output = await keyturn_cli(database_url, "audit", "verify")
    expected = len(users) * (1 + sessions_per_user * (1 + refreshes_per_session))
    assert status == 0, output
    assert f"audit log intact: {expected} events verified" in output


async def test_concurrent_writers_in_one_process_keep_the_chain_valid(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    tokens = [await register(client, email=f"user{i}@example.com") for i in range(4)]

    async def refreshes(first: dict[str, Any]) -> None:
        token = first["refresh_token"]
        for _ in range(10):
            response = await client.post("/auth/refresh", json={"refresh_token": token})
            assert response.status_code == 200, response.text
            token = response.json()["refresh_token"]

    await asyncio.gather(*(refreshes(t) for t in tokens))
    stored = await chain(keyturn)
    assert [seq for _, seq in stored] == list(range(1, 45))
    report = await keyturn.audit.verify()
    assert report.is_intact
    assert report.events_checked == 44


# --- sealing: events join the chain after their commit -------------------------------------


async def unsealed(keyturn: Keyturn) -> int:
    """Events stored but not yet chained, read as someone with database access would."""
    rows = await sql(keyturn, "SELECT count(*) FROM audit_events WHERE seq IS NULL")
    return int(rows[0][0])


async def test_a_running_server_seals_new_events_without_anyone_reading_them(
    settings: Settings, clock: FakeClock
) -> None:
    keyturn = Keyturn(settings, clock=clock)
    await keyturn.start(background=True)  # the sealer runs as in `keyturn serve`
    try:
        async with instances.client_of(keyturn) as client:
            await register(client)
        for _ in range(100):  # sealed within SEAL_IDLE of the commit (1 s), polled for 5 s
            if await unsealed(keyturn) == 0:
                break
            await asyncio.sleep(0.05)
        assert await unsealed(keyturn) == 0
        assert await head_seq(keyturn) == 1
    finally:
        await keyturn.stop()


async def test_stopping_an_instance_seals_what_it_wrote(
    settings: Settings, clock: FakeClock
) -> None:
    async with instances.serving(settings, clock) as (keyturn, client):  # no sealer running
        ada = await register(client)
        await client.post("/auth/refresh", json={"refresh_token": ada["refresh_token"]})
        # SQLite chains an event as it is written (its writer holds the only write lock).
        assert await unsealed(keyturn) == (0 if keyturn.database.is_sqlite else 2)
    async with instances.started(settings, clock) as again:
        assert await unsealed(again) == 0
        report = await again.audit.verify()
        assert report.is_intact
        assert report.events_checked == 2


async def test_pruning_leaves_events_written_after_the_seal_to_the_next_one(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock
) -> None:
    """Between `prune`'s seal and its own transaction a live server may commit new events."""
    await some_history(client, clock)
    await keyturn.audit.seal()
    clock.advance(1)
    async with keyturn.database.write() as conn:  # committed after the seal
        await audit_store.append_events(
            conn, [event(EventType.USER_DELETED, now=keyturn.clock(), client=ClientInfo())]
        )
    async with keyturn.database.write() as conn:
        pruned = await audit_store.prune_before(conn, keyturn.clock())
    assert pruned > 0
    assert await unsealed(keyturn) == (0 if keyturn.database.is_sqlite else 1)
    report = await keyturn.audit.verify()
    assert report.is_intact
    assert report.events_checked == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": "u" * 32, "session_id": "s" * 32, "ip": "203.0.113.7", "user_agent": None},
        {
            "user_id": None,
            "session_id": None,
            "ip": None,
            "user_agent": 'Zoë "quoted" \\ 中 😀\u2028',
        },
        {"user_id": "u", "session_id": "\x00\x1f\x7f", "ip": "::1", "user_agent": "a\tb\nc"},
    ],
)
@pytest.mark.parametrize(
    "detail",
    [{}, {"reason": "logout", "n": -3, "f": 1.5, "nested": {"b": [1, None, "é"], "a": True}}],
)
def test_an_event_hashes_as_the_compact_sorted_ascii_json_of_its_fields(
    fields: dict[str, Any], detail: dict[str, Any]
) -> None:
    """Every event ever chained was hashed over this form; `audit verify` recomputes it."""
    occurred_at = datetime(2026, 11, 27, 16, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    content = {
        "seq": 2**40 + 7,
        "id": "e" * 32,
        "type": "session.refreshed",
        "occurred_at": occurred_at.isoformat(timespec="microseconds"),
        "detail": detail,
        "prev_hash": "0" * 64,
        **fields,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    expected = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    assert (
        audit_store.canonical_hash(
            seq=content["seq"],
            event_id=content["id"],
            type=content["type"],
            occurred_at=occurred_at,
            detail=detail,
            prev_hash=content["prev_hash"],
            **fields,
        )
        == expected
    )


async def test_sqlite_chains_an_event_in_the_transaction_that_writes_it(
    sqlite_keyturn: Keyturn,
) -> None:
    """SQLite's writer holds the only write lock, so an event joins the chain as it is written;
    one an earlier release left waiting is sealed after it, and the chain verifies: the hash
    covers what is read back (the time in UTC, the detail as stored)."""
    keyturn = sqlite_keyturn
    await sql(
        keyturn,
        "INSERT INTO audit_events (id, type, occurred_at, detail)"
        " VALUES ('earlier-release-event', 'user.registered', '2026-11-27 09:00:00.000000', '{}')",
    )
    in_berlin = datetime(2026, 11, 27, 12, 30, 0, 250, tzinfo=timezone(timedelta(hours=1)))
    async with keyturn.database.write() as conn:
        await audit_store.append_events(
            conn,
            [
                event(
                    EventType.PROFILE_UPDATED,
                    now=in_berlin,
                    client=ClientInfo(ip="203.0.113.7", user_agent="agent"),
                    fields=("name",),  # a tuple, stored (and read back) as a JSON list
                )
            ],
        )
    assert await unsealed(keyturn) == 1  # the earlier release's alone
    assert await keyturn.audit.seal() == 1
    report = await keyturn.audit.verify()
    assert report.is_intact
    assert report.events_checked == 2


async def test_starting_on_sqlite_seals_what_an_earlier_release_left_before_anything_new(
    tmp_path: Path, clock: FakeClock
) -> None:
    """From start on, SQLite chains each event as it is written: the ones an earlier release
    left waiting must be chained first, or the log would list them as the newest."""
    path = tmp_path / "keyturn.db"
    settings = settings_for(f"sqlite+aiosqlite:///{path}")
    async with instances.started(settings, clock):
        pass  # migrated
    with sqlite3.connect(path) as earlier_release:  # writes an event and stops, unsealed
        earlier_release.execute(
            "INSERT INTO audit_events (id, type, occurred_at, detail)"
            " VALUES ('left-waiting', 'user.registered', '2026-11-27 09:00:00.000000', '{}')"
        )
    async with instances.serving(settings, clock) as (again, client):
        assert await unsealed(again) == 0
        await register(client)
        chained = [event_id for event_id, _ in await chain(again)]
        assert len(chained) == 2
        assert chained[0] == "left-waiting"
        assert (await again.audit.verify()).is_intact
