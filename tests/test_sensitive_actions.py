"""Sensitive actions: password change, fresh-session gates, re-authentication, account deletion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from httpx import AsyncClient

from keyturn import Keyturn, Settings
from tests.actions import PASSWORD, bearer, login, register
from tests.clock import FakeClock
from tests.instances import serving

NEW_PASSWORD = "violet staple horse correct"
FRESH_AGE = 600  # KEYTURN_FRESH_AGE default


@asynccontextmanager
async def client_for(settings: Settings, clock: FakeClock) -> AsyncIterator[AsyncClient]:
    """A client on its own Keyturn, for tests that need other TTLs than the fixture's."""
    async with serving(settings, clock) as (_, http):
        yield http


async def my_events(client: AsyncClient, tokens: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.get("/me/audit", headers=bearer(tokens), params={"limit": 200})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def change_email(
    client: AsyncClient, tokens: dict[str, Any], new_email: str
) -> httpx.Response:
    return await client.post("/me/email", headers=bearer(tokens), json={"new_email": new_email})


async def reauthenticate(
    client: AsyncClient, tokens: dict[str, Any], password: str = PASSWORD
) -> httpx.Response:
    return await client.post(
        "/auth/reauthenticate", headers=bearer(tokens), json={"password": password}
    )


async def refresh(client: AsyncClient, tokens: dict[str, Any]) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})


# --- POST /me/password ---------------------------------------------------------------------


async def test_password_change_with_a_wrong_current_password_is_refused(
    client: AsyncClient,
) -> None:
    tokens = await register(client)
    other = await login(client)
    response = await client.post(
        "/me/password",
        headers=bearer(tokens),
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_password"
    assert "not my password" not in response.text
    # Nothing changed: the old password still works, the new one does not, no session ended.
    await login(client)
    refused = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": NEW_PASSWORD}
    )
    assert refused.status_code == 401
    assert (await client.get("/me", headers=bearer(other))).status_code == 200
    assert "password.changed" not in {e["type"] for e in await my_events(client, tokens)}


async def test_password_change_to_a_weak_password_is_refused(client: AsyncClient) -> None:
    tokens = await register(client)
    other = await login(client)
    response = await client.post(
        "/me/password",
        headers=bearer(tokens),
        json={"current_password": PASSWORD, "new_password": "password123"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "weak_password"
    assert PASSWORD not in response.text
    await login(client)
    assert (await client.get("/me", headers=bearer(other))).status_code == 200


async def test_password_change_revokes_every_other_session_and_keeps_this_one(
    client: AsyncClient,
) -> None:
    current = await register(client)
    second = await login(client)
    third = await login(client)

    response = await client.post(
        "/me/password",
        headers=bearer(current),
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 204

    for ended in (second, third):
        assert (await client.get("/me", headers=bearer(ended))).status_code == 401
        assert (await refresh(client, ended)).status_code == 401
    assert (await client.get("/me", headers=bearer(current))).status_code == 200
    sessions = (await client.get("/me/sessions", headers=bearer(current))).json()["sessions"]
    assert [s["id"] for s in sessions] == [current["session_id"]]
    renewed = await refresh(client, current)
    assert renewed.status_code == 200
    assert renewed.json()["session_id"] == current["session_id"]

    revoked = {
        e["session_id"]: e["detail"]["reason"]
        for e in await my_events(client, renewed.json())
        if e["type"] == "session.revoked"
    }
    assert revoked == {
        second["session_id"]: "password_changed",
        third["session_id"]: "password_changed",
    }

    await login(client, password=NEW_PASSWORD)
    old = await client.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
    assert old.status_code == 401
    assert old.json()["code"] == "invalid_credentials"


async def test_password_change_needs_no_fresh_session_and_makes_it_fresh(
    client: AsyncClient, clock: FakeClock
) -> None:
    """The current password is typed, so it is proof enough and counts as re-authentication."""
    tokens = await register(client)
    clock.advance(FRESH_AGE + 1)
    assert (await change_email(client, tokens, "stale@example.com")).status_code == 403
    response = await client.post(
        "/me/password",
        headers=bearer(tokens),
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 204
    assert (await change_email(client, tokens, "fresh@example.com")).status_code == 200


# --- fresh sessions: POST /me/email, DELETE /me, POST /auth/reauthenticate ------------------


async def test_email_change_needs_a_fresh_session_and_reauthentication_restores_it(
    client: AsyncClient, clock: FakeClock
) -> None:
    tokens = await register(client)
    assert (await change_email(client, tokens, "first@example.com")).status_code == 200

    clock.advance(FRESH_AGE + 1)
    stale = await change_email(client, tokens, "second@example.com")
    assert stale.status_code == 403
    assert stale.json()["code"] == "reauthentication_required"
    assert (await client.get("/me", headers=bearer(tokens))).json()["email"] == "first@example.com"

    wrong = await reauthenticate(client, tokens, "not my password")
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "invalid_password"
    assert (await change_email(client, tokens, "second@example.com")).status_code == 403

    assert (await reauthenticate(client, tokens)).status_code == 204
    changed = await change_email(client, tokens, "Second@Example.com")
    assert changed.status_code == 200
    assert changed.json()["email"] == "second@example.com"
    assert changed.json()["email_verified"] is False
    await login(client, email="second@example.com")

    # Fresh for KEYTURN_FRESH_AGE after the re-authentication (a refresh keeps, not renews, it).
    tokens = (await refresh(client, tokens)).json()
    clock.advance(FRESH_AGE - 1)
    assert (await change_email(client, tokens, "third@example.com")).status_code == 200
    clock.advance(2)
    assert (await change_email(client, tokens, "fourth@example.com")).status_code == 403


async def test_account_deletion_needs_a_fresh_session(
    client: AsyncClient, clock: FakeClock
) -> None:
    tokens = await register(client)
    clock.advance(FRESH_AGE + 1)
    stale = await client.delete("/me", headers=bearer(tokens))
    assert stale.status_code == 403
    assert stale.json()["code"] == "reauthentication_required"
    assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
    await login(client)

    assert (await reauthenticate(client, tokens)).status_code == 204
    assert (await client.delete("/me", headers=bearer(tokens))).status_code == 204


async def test_reauthentication_needs_a_session(client: AsyncClient) -> None:
    await register(client)
    response = await client.post("/auth/reauthenticate", json={"password": PASSWORD})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


async def test_a_refresh_never_makes_a_session_fresh_again(
    client: AsyncClient, clock: FakeClock
) -> None:
    tokens = await register(client)
    clock.advance(FRESH_AGE + 1)
    refreshed = await refresh(client, tokens)
    assert refreshed.status_code == 200
    response = await change_email(client, refreshed.json(), "new@example.com")
    assert response.status_code == 403
    assert response.json()["code"] == "reauthentication_required"
    # Nor does the OAuth2 refresh grant.
    granted = await client.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]},
    )
    assert granted.status_code == 200
    again = await change_email(client, granted.json(), "new@example.com")
    assert again.status_code == 403


async def test_reauthentication_is_per_session(client: AsyncClient, clock: FakeClock) -> None:
    first = await register(client)
    second = await login(client)
    clock.advance(FRESH_AGE + 1)
    assert (await reauthenticate(client, first)).status_code == 204
    assert (await change_email(client, second, "new@example.com")).status_code == 403
    assert (await change_email(client, first, "new@example.com")).status_code == 200


async def test_freshness_never_extends_a_sessions_lifetime(
    settings: Settings, clock: FakeClock
) -> None:
    settings = settings.with_overrides(
        session_max_ttl=1800, session_idle_ttl=1800, access_token_ttl=900
    )
    async with client_for(settings, clock) as client:
        tokens = await register(client)
        (before,) = (await client.get("/me/sessions", headers=bearer(tokens))).json()["sessions"]

        clock.advance(800)
        tokens = (await refresh(client, tokens)).json()
        clock.advance(700)  # 1500 s after login, 300 s before the session's hard end
        assert (await reauthenticate(client, tokens)).status_code == 204
        password_changed = await client.post(
            "/me/password",
            headers=bearer(tokens),
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        assert password_changed.status_code == 204
        tokens = (await refresh(client, tokens)).json()
        (after,) = (await client.get("/me/sessions", headers=bearer(tokens))).json()["sessions"]
        assert after["expires_at"] == before["expires_at"]

        clock.advance(301)  # past KEYTURN_SESSION_MAX_TTL, though fresh 301 s ago
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 401
        ended = await refresh(client, tokens)
        assert ended.status_code == 401
        assert ended.json()["code"] == "session_expired"


# --- POST /me/email conflicts --------------------------------------------------------------


async def test_email_change_to_a_taken_address_is_409_and_changes_nothing(
    client: AsyncClient,
) -> None:
    ada = await register(client)
    await register(client, email="bob@example.com")
    response = await change_email(client, ada, "BOB@example.com")
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert (await client.get("/me", headers=bearer(ada))).json()["email"] == "ada@example.com"
    await login(client, email="ada@example.com")
    assert "email.changed" not in {e["type"] for e in await my_events(client, ada)}


# --- DELETE /me ----------------------------------------------------------------------------


async def test_deleting_the_account_ends_it_frees_the_email_and_keeps_the_audit_trail(
    client: AsyncClient, keyturn: Keyturn
) -> None:
    await keyturn.accounts.create_user("root@example.com", PASSWORD, is_admin=True)
    admin = await login(client, email="root@example.com")
    registered = await register(client, name="Ada")
    user_id = registered["user"]["id"]
    other = await login(client)

    assert (await client.delete("/me", headers=bearer(registered))).status_code == 204

    for tokens in (registered, other):
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 401
        assert (await refresh(client, tokens)).status_code == 401
    refused = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_credentials"
    users = await client.get(
        "/admin/users", headers=bearer(admin), params={"query": "ada@example.com"}
    )
    assert users.json()["users"] == []

    reborn = await register(client)
    assert reborn["user"]["id"] != user_id
    fresh_trail = await my_events(client, reborn)
    assert {e["user_id"] for e in fresh_trail} == {reborn["user"]["id"]}
    assert {e["type"] for e in fresh_trail} == {"user.registered"}

    trail = await client.get(
        "/admin/audit", headers=bearer(admin), params={"user_id": user_id, "limit": 200}
    )
    events = trail.json()["events"]
    assert events[0]["type"] == "user.deleted"
    assert events[0]["session_id"] == registered["session_id"]
    assert events[-1]["type"] == "user.registered"
    assert {e["session_id"] for e in events if e["type"] == "session.revoked"} == {
        registered["session_id"],
        other["session_id"],
    }
    assert {e["detail"]["reason"] for e in events if e["type"] == "session.revoked"} == {
        "account_deleted"
    }


async def test_wrong_passwords_inside_a_session_count_like_failed_logins(
    client: AsyncClient,
) -> None:
    """A stolen access token is no password-guessing oracle: reauthenticate shares the
    per-account failure limit with login, and every wrong guess is audited."""
    tokens = await register(client)
    for _ in range(5):
        wrong = await client.post(
            "/auth/reauthenticate", headers=bearer(tokens), json={"password": "guess guess"}
        )
        assert wrong.status_code == 400
        assert wrong.json()["code"] == "invalid_password"
    throttled = await client.post(
        "/auth/reauthenticate", headers=bearer(tokens), json={"password": PASSWORD}
    )
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "too_many_attempts"
    assert int(throttled.headers["retry-after"]) > 0
    login_too = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert login_too.status_code == 429
    events = (await client.get("/me/audit", headers=bearer(tokens))).json()["events"]
    assert [e["type"] for e in events].count("reauthentication.failed") == 5
