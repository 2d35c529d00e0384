"""Sessions end exactly when they should: rotation with reuse detection, idle and absolute
timeouts, the device list and every way of revoking (ASGI transport, SQLite and PostgreSQL).

TTLs are short and come from environment variables, read the way `keyturn serve` reads them;
the clock is a `FakeClock` moved by hand, so every boundary is tested to the second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from httpx import AsyncClient
from sqlalchemy import update

from keyturn import Keyturn, Settings
from keyturn.storage.schema import sessions
from tests.actions import PASSWORD, bearer, login, register
from tests.clock import FakeClock
from tests.instances import serving, settings_from_env

IDLE_TTL = 600
MAX_TTL = 1800
GRACE = 10
# Access tokens outlive the idle timeout here, so a 401 on /me can only come from the session.
ACCESS_TTL = MAX_TTL
PEER = "203.0.113.7"  # the ASGI client address of the `client` fixture


def short_ttl_settings(database_url: str, **env: str) -> Settings:
    return settings_from_env(
        database_url,
        KEYTURN_SESSION_IDLE_TTL=str(IDLE_TTL),
        KEYTURN_SESSION_MAX_TTL=str(MAX_TTL),
        KEYTURN_REFRESH_REUSE_GRACE=str(GRACE),
        KEYTURN_ACCESS_TOKEN_TTL=str(ACCESS_TTL),
        **env,
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return short_ttl_settings(database_url)


def at(timestamp: str) -> datetime:
    parsed = datetime.fromisoformat(timestamp)
    assert parsed.utcoffset() == timedelta(0), f"{timestamp} is not UTC"
    return parsed


async def refresh(client: AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": token})


async def refreshed(client: AsyncClient, tokens: dict[str, Any]) -> dict[str, Any]:
    response = await refresh(client, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def my_sessions(client: AsyncClient, tokens: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.get("/me/sessions", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["sessions"]
    return found


async def my_events(client: AsyncClient, tokens: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.get("/me/audit", params={"limit": 200}, headers=bearer(tokens))
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def me_status(client: AsyncClient, tokens: dict[str, Any]) -> int:
    return (await client.get("/me", headers=bearer(tokens))).status_code


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


# --- rotation and reuse detection ----------------------------------------------------------


async def test_refresh_rotates_and_the_new_token_keeps_the_session(client: AsyncClient) -> None:
    first = await register(client)
    second = await refreshed(client, first)
    assert second["refresh_token"] != first["refresh_token"]
    assert second["session_id"] == first["session_id"]
    assert second["token_type"] == "Bearer"
    assert second["user"]["id"] == first["user"]["id"]
    assert await me_status(client, second) == 200
    third = await refreshed(client, second)
    assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3


async def test_predecessor_within_the_grace_returns_the_same_successor(
    client: AsyncClient, clock: FakeClock
) -> None:
    first = await register(client)
    successor = await refreshed(client, first)
    clock.advance(GRACE)  # the boundary itself still counts as a retry
    retried = await refreshed(client, first)
    assert retried["refresh_token"] == successor["refresh_token"]
    assert retried["session_id"] == successor["session_id"]
    # The retry did not cost the session anything: the successor rotates normally.
    assert await me_status(client, retried) == 200
    after = await refreshed(client, successor)
    assert after["refresh_token"] not in {first["refresh_token"], successor["refresh_token"]}


async def test_predecessor_after_the_grace_is_reuse_and_revokes_the_whole_session(
    client: AsyncClient, clock: FakeClock
) -> None:
    witness = await register(client)  # another session of the same user, to read the audit
    stolen = await login(client)
    successor = await refreshed(client, stolen)
    clock.advance(GRACE + 1)

    reused = await refresh(client, stolen["refresh_token"])
    assert reused.status_code == 401
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["code"] == "refresh_token_reused"
    assert stolen["refresh_token"] not in reused.text

    # Revoked at once: the successor, and every access token of the session, on /me.
    again = await refresh(client, successor["refresh_token"])
    assert again.status_code == 401
    assert again.json()["code"] == "invalid_refresh_token"
    assert await me_status(client, successor) == 401
    assert await me_status(client, stolen) == 401
    assert await me_status(client, witness) == 200

    events = await my_events(client, witness)
    reuse = [e for e in events if e["type"] == "refresh_token.reused"]
    revoked = [e for e in events if e["type"] == "session.revoked"]
    assert [e["session_id"] for e in reuse] == [stolen["session_id"]]
    assert [(e["session_id"], e["detail"]["reason"]) for e in revoked] == [
        (stolen["session_id"], "refresh_token_reused")
    ]
    assert reuse[0]["ip"] == PEER
    for secret in (stolen["refresh_token"], successor["refresh_token"]):
        assert secret not in str(events)
    assert stolen["session_id"] not in {s["id"] for s in await my_sessions(client, witness)}


async def test_an_older_token_is_reuse_even_within_the_grace(client: AsyncClient) -> None:
    first = await register(client)
    second = await refreshed(client, first)
    third = await refreshed(client, second)
    # `second` is the immediate predecessor of the live token: a retry, same successor.
    assert (await refreshed(client, second))["refresh_token"] == third["refresh_token"]
    # `first` is older than that: theft, also through the OAuth2 token endpoint.
    grant = await client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert grant.status_code == 400
    assert grant.json()["error"] == "invalid_grant"
    assert grant.json()["code"] == "refresh_token_reused"
    assert (await refresh(client, third["refresh_token"])).status_code == 401
    assert await me_status(client, third) == 401


async def test_an_unknown_refresh_token_is_invalid(client: AsyncClient) -> None:
    tokens = await register(client)
    for token in ["A" * 43, "short", "ü" * 43]:  # well-formed but never issued; malformed
        response = await refresh(client, token)
        assert response.status_code == 401, token
        assert response.json()["code"] == "invalid_refresh_token"
    assert await me_status(client, tokens) == 200


# --- idle timeout and absolute lifetime ----------------------------------------------------


async def test_an_idle_session_can_no_longer_refresh(client: AsyncClient, clock: FakeClock) -> None:
    first = await register(client)
    clock.advance(IDLE_TTL - 1)
    second = await refreshed(client, first)  # a refresh is activity: the idle clock restarts
    clock.advance(IDLE_TTL)
    expired = await refresh(client, second["refresh_token"])
    assert expired.status_code == 401
    assert expired.json()["code"] == "session_expired"
    assert await me_status(client, second) == 401


async def test_an_idle_session_is_refused_on_protected_routes(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock
) -> None:
    tokens = await register(client)
    clock.advance(IDLE_TTL - 1)
    assert await me_status(client, tokens) == 200  # use counts as activity too
    await keyturn.sessions.recorded()  # written beside the request (the clock here jumps)
    clock.advance(IDLE_TTL - 1)
    assert await me_status(client, tokens) == 200
    await keyturn.sessions.recorded()
    clock.advance(IDLE_TTL)
    response = await client.get("/me", headers=bearer(tokens))
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert (await refresh(client, tokens["refresh_token"])).json()["code"] == "session_expired"


async def test_refresh_never_extends_the_absolute_lifetime(
    client: AsyncClient, clock: FakeClock
) -> None:
    tokens = await register(client)
    created = at((await my_sessions(client, tokens))[0]["created_at"])
    for _ in range(3):  # refreshed at 500, 1000 and 1500 seconds: never idle
        clock.advance(500)
        tokens = await refreshed(client, tokens)
    (listed,) = await my_sessions(client, tokens)
    assert at(listed["expires_at"]) == created + timedelta(seconds=MAX_TTL)

    # The last access token ends with the session, not a full TTL after its refresh: a
    # verifier elsewhere, which cannot ask about the session, refuses it from then on too.
    assert tokens["expires_in"] == MAX_TTL - 1500
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["exp"] == int((created + timedelta(seconds=MAX_TTL)).timestamp())

    clock.advance(MAX_TTL - 1500 - 1)
    assert await me_status(client, tokens) == 200
    clock.advance(1)
    expired = await refresh(client, tokens["refresh_token"])
    assert expired.status_code == 401
    assert expired.json()["code"] == "session_expired"
    assert await me_status(client, tokens) == 401


async def test_last_seen_is_written_at_most_once_per_interval(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock, settings: Settings
) -> None:
    tokens = await register(client)
    interval = settings.session_touch_interval
    assert interval == 60
    (listed,) = await my_sessions(client, tokens)
    created = at(listed["created_at"])
    assert at(listed["last_seen_at"]) == created

    for _ in range(interval - 1):  # a request every second for just under a minute
        clock.advance(1)
        assert await me_status(client, tokens) == 200
    (listed,) = await my_sessions(client, tokens)
    assert at(listed["last_seen_at"]) == created
    assert at(listed["expires_at"]) == created + timedelta(seconds=IDLE_TTL)

    clock.advance(1)
    assert await me_status(client, tokens) == 200
    await keyturn.sessions.recorded()  # written beside the request, not before its answer
    (listed,) = await my_sessions(client, tokens)
    assert at(listed["last_seen_at"]) == created + timedelta(seconds=interval)
    assert at(listed["expires_at"]) == created + timedelta(seconds=interval + IDLE_TTL)

    clock.advance(7)
    await refreshed(client, tokens)  # a refresh always records activity
    (listed,) = await my_sessions(client, tokens)
    assert at(listed["last_seen_at"]) == created + timedelta(seconds=interval + 7)


async def test_a_request_that_records_activity_does_not_wait_for_the_write(
    client: AsyncClient, keyturn: Keyturn, clock: FakeClock, settings: Settings
) -> None:
    """While another writer holds what the activity's write needs (SQLite's write lock, or the
    session's row on PostgreSQL), the request is answered; the write follows once it can."""
    tokens = await register(client)
    (listed,) = await my_sessions(client, tokens)
    clock.advance(settings.session_touch_interval)
    async with keyturn.database.write() as conn:
        await conn.execute(
            update(sessions).where(sessions.c.id == listed["id"]).values(user_agent="held")
        )
        assert await asyncio.wait_for(me_status(client, tokens), timeout=5) == 200
    await keyturn.sessions.recorded()
    (after,) = await my_sessions(client, tokens)
    assert at(after["last_seen_at"]) == at(listed["last_seen_at"]) + timedelta(
        seconds=settings.session_touch_interval
    )
    assert after["user_agent"] == "held"


# --- the device list -----------------------------------------------------------------------


async def test_session_list_shows_each_device_and_marks_the_current_one(
    client: AsyncClient, clock: FakeClock
) -> None:
    phone = (
        await client.post(
            "/auth/register",
            json={"email": "ada@example.com", "password": PASSWORD},
            headers={"User-Agent": "Phone/1.0"},
        )
    ).json()
    clock.advance(5)
    laptop = (
        await client.post(
            "/auth/login",
            json={"email": "ada@example.com", "password": PASSWORD},
            headers={"User-Agent": "Laptop/2.0"},
        )
    ).json()
    gone = await login(client)
    assert (await client.post("/auth/logout", headers=bearer(gone))).status_code == 204
    await register(client, email="bob@example.com")  # another user's session never shows

    listed = await my_sessions(client, laptop)
    assert [s["id"] for s in listed] == [laptop["session_id"], phone["session_id"]]
    by_id = {s["id"]: s for s in listed}
    expected_keys = {"id", "created_at", "last_seen_at", "expires_at", "ip", "user_agent"}
    assert set(listed[0]) == {*expected_keys, "current"}
    assert by_id[laptop["session_id"]]["current"] is True
    assert by_id[phone["session_id"]]["current"] is False
    assert by_id[laptop["session_id"]]["user_agent"] == "Laptop/2.0"
    assert by_id[phone["session_id"]]["user_agent"] == "Phone/1.0"
    assert {s["ip"] for s in listed} == {PEER}
    phone_created = at(by_id[phone["session_id"]]["created_at"])
    assert at(by_id[laptop["session_id"]]["created_at"]) == phone_created + timedelta(seconds=5)
    assert at(by_id[phone["session_id"]]["expires_at"]) == phone_created + timedelta(
        seconds=IDLE_TTL
    )
    # From the phone, the phone is the current one.
    assert [s["id"] for s in await my_sessions(client, phone) if s["current"]] == [
        phone["session_id"]
    ]


@pytest.fixture
async def behind_proxy(settings: Settings, clock: FakeClock) -> AsyncIterator[AsyncClient]:
    """A second instance on the same database that trusts the proxy at PEER."""
    trusting = short_ttl_settings(settings.database_url, KEYTURN_TRUSTED_PROXIES="203.0.113.0/24")
    async with serving(trusting, clock, PEER) as (_, http):
        yield http


async def test_session_ip_follows_the_trusted_proxy_rule(
    client: AsyncClient, behind_proxy: AsyncClient
) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.9"}
    untrusted = (
        await client.post(
            "/auth/register",
            json={"email": "ada@example.com", "password": PASSWORD},
            headers=forwarded,
        )
    ).json()
    trusted = (
        await behind_proxy.post(
            "/auth/login",
            json={"email": "ada@example.com", "password": PASSWORD},
            headers=forwarded,
        )
    ).json()
    ips = {s["id"]: s["ip"] for s in await my_sessions(client, untrusted)}
    assert ips == {untrusted["session_id"]: PEER, trusted["session_id"]: "198.51.100.9"}


# --- revocation ----------------------------------------------------------------------------


async def test_deleting_one_of_my_sessions_ends_it_at_once(client: AsyncClient) -> None:
    mine = await register(client)
    other = await login(client)
    deleted = await client.delete(f"/me/sessions/{other['session_id']}", headers=bearer(mine))
    assert deleted.status_code == 204
    assert await me_status(client, other) == 401
    assert (await refresh(client, other["refresh_token"])).status_code == 401
    assert await me_status(client, mine) == 200
    assert [s["id"] for s in await my_sessions(client, mine)] == [mine["session_id"]]
    revoked = [e for e in await my_events(client, mine) if e["type"] == "session.revoked"]
    assert [(e["session_id"], e["detail"]["reason"]) for e in revoked] == [
        (other["session_id"], "user")
    ]
    # Gone is gone: deleting it again is as unknown as any other id.
    again = await client.delete(f"/me/sessions/{other['session_id']}", headers=bearer(mine))
    assert again.status_code == 404


async def test_another_users_session_looks_exactly_like_an_unknown_id(
    client: AsyncClient,
) -> None:
    ada = await register(client)
    bob = await register(client, email="bob@example.com")
    foreign = await client.delete(f"/me/sessions/{bob['session_id']}", headers=bearer(ada))
    unknown = await client.delete(f"/me/sessions/{'0' * 32}", headers=bearer(ada))
    malformed = await client.delete("/me/sessions/not-an-id", headers=bearer(ada))
    assert foreign.status_code == unknown.status_code == malformed.status_code == 404
    assert foreign.json()["code"] == "not_found"
    assert foreign.headers["content-type"] == unknown.headers["content-type"]
    assert without_request_id(foreign.json()) == without_request_id(unknown.json())
    assert without_request_id(malformed.json()) == without_request_id(unknown.json())
    assert bob["session_id"] not in foreign.text
    assert await me_status(client, bob) == 200
    assert (await refresh(client, bob["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    ("scope", "survivors"),
    [
        ("local", {"other", "more"}),
        ("others", {"caller"}),
        ("global", set()),
    ],
)
async def test_logout_scope_ends_exactly_the_sessions_it_names(
    client: AsyncClient, scope: str, survivors: set[str]
) -> None:
    sessions = {"caller": await register(client), "other": await login(client)}
    sessions["more"] = await login(client)
    bystander = await register(client, email="bob@example.com")
    response = await client.post(
        "/auth/logout", params={"scope": scope}, headers=bearer(sessions["caller"])
    )
    assert response.status_code == 204

    for name, tokens in sessions.items():
        alive = name in survivors
        assert await me_status(client, tokens) == (200 if alive else 401), name
        status = (await refresh(client, tokens["refresh_token"])).status_code
        assert status == (200 if alive else 401), name
    assert await me_status(client, bystander) == 200
    if survivors:
        witness = sessions[sorted(survivors)[0]]
        reasons = {
            e["session_id"]: e["detail"]["reason"]
            for e in await my_events(client, witness)
            if e["type"] == "session.revoked"
        }
        ended = {sessions[n]["session_id"] for n in sessions.keys() - survivors}
        assert reasons == dict.fromkeys(ended, "logout")


async def test_logout_ends_only_this_session_by_default_and_needs_one(
    client: AsyncClient,
) -> None:
    caller = await register(client)
    other = await login(client)
    assert (await client.post("/auth/logout")).status_code == 401
    bad = await client.post("/auth/logout", params={"scope": "everything"}, headers=bearer(caller))
    assert bad.status_code == 422
    assert await me_status(client, caller) == 200
    assert (await client.post("/auth/logout", headers=bearer(caller))).status_code == 204
    assert await me_status(client, caller) == 401
    assert await me_status(client, other) == 200
    # Logging out twice with the same token: the session is gone, so 401.
    assert (await client.post("/auth/logout", headers=bearer(caller))).status_code == 401


async def test_revoking_a_token_ends_its_session_whatever_the_encoding(
    client: AsyncClient,
) -> None:
    keep = await register(client)
    victims = {
        ("form", "refresh_token"): await login(client),
        ("json", "refresh_token"): await login(client),
        ("form", "access_token"): await login(client),
    }
    for (encoding, which), victim in victims.items():
        payload = {"token": victim[which]}
        if encoding == "form":
            response = await client.post("/auth/revoke", data=payload)
        else:
            response = await client.post("/auth/revoke", json=payload)
        assert response.status_code == 200, (encoding, which)
        assert await me_status(client, victim) == 401, (encoding, which)
        assert (await refresh(client, victim["refresh_token"])).status_code == 401
    assert await me_status(client, keep) == 200
    assert [s["id"] for s in await my_sessions(client, keep)] == [keep["session_id"]]


async def test_revoke_answers_200_for_tokens_it_does_not_know(client: AsyncClient) -> None:
    tokens = await register(client)
    forged_jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"
    attempts: list[dict[str, Any]] = [
        {"data": {"token": "A" * 43}},
        {"json": {"token": "A" * 43}},
        {"data": {"token": forged_jwt}},
        {"data": {"token": ""}},
        {"data": {"token_type_hint": "refresh_token"}},
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
    ]
    for attempt in attempts:
        response = await client.post("/auth/revoke", **attempt)
        assert response.status_code == 200, attempt
    assert await me_status(client, tokens) == 200


async def test_a_session_that_already_ended_cannot_be_deleted_again(
    client: AsyncClient, clock: FakeClock
) -> None:
    """An idled-out session is as unknown to its owner as it is absent from the list."""
    idle = await register(client)
    clock.advance(IDLE_TTL - 100)
    active = await login(client)
    clock.advance(101)  # `idle` has now ended; `active` has not
    gone = await client.delete(f"/me/sessions/{idle['session_id']}", headers=bearer(active))
    assert gone.status_code == 404
    events = await my_events(client, active)
    assert not [e for e in events if e["type"] == "session.revoked"]
