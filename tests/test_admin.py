"""The admin surface over HTTP and the CLI's account commands, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient

from keyturn import Keyturn
from tests.actions import PASSWORD, bearer, login, register
from tests.server_process import KEYTURN, server_env

ADMIN_EMAIL = "root@example.com"
UNKNOWN_ID = "0" * 32

ADMIN_ROUTES = [
    ("GET", "/admin/users"),
    ("GET", "/admin/users/{id}/sessions"),
    ("DELETE", "/admin/users/{id}/sessions"),
    ("POST", "/admin/users/{id}/disable"),
    ("POST", "/admin/users/{id}/enable"),
    ("GET", "/admin/audit"),
]
USER_ROUTES = [route for route in ADMIN_ROUTES if "{id}" in route[1]]


@pytest.fixture
async def admin(keyturn: Keyturn, client: AsyncClient) -> dict[str, Any]:
    """Token response of an administrator made the way `keyturn users create --admin` does."""
    await keyturn.accounts.create_user(ADMIN_EMAIL, PASSWORD, name="Root", is_admin=True)
    return await login(client, ADMIN_EMAIL)


async def run_cli(database_url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """`.venv/bin/keyturn ARGS` against the test database; exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        KEYTURN,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=server_env(database_url),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def events(client: AsyncClient, admin: dict[str, Any], **params: str) -> list[dict[str, Any]]:
    response = await client.get("/admin/audit", headers=bearer(admin), params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


# --- listing and searching ----------------------------------------------------------------


async def test_admin_pages_through_every_user_with_the_cursor(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    registered = [(await register(client, f"user{i}@example.com"))["user"] for i in range(5)]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/admin/users", headers=bearer(admin), params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["users"]) <= 2
        seen.extend(page["users"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    ids = [user["id"] for user in seen]
    assert len(ids) == len(set(ids)) == 6
    assert {admin["user"]["id"], *(user["id"] for user in registered)} == set(ids)
    for user in seen:
        assert set(user) == {"id", "email", "name", "email_verified", "is_admin", "created_at"}

    everyone = await client.get("/admin/users", headers=bearer(admin))
    assert [user["id"] for user in everyone.json()["users"]] == ids
    assert everyone.json()["next_cursor"] is None


async def test_admin_search_matches_an_email_or_name_fragment(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    ada = (await register(client, "ada@example.org", name="Ada Lovelace"))["user"]
    grace = (await register(client, "grace@example.com", name="Grace_Hopper"))["user"]
    await register(client, "alan@example.com", name="Alan Turing")

    async def search(query: str) -> set[str]:
        response = await client.get("/admin/users", headers=bearer(admin), params={"query": query})
        assert response.status_code == 200, response.text
        return {user["email"] for user in response.json()["users"]}

    assert await search("LOVELACE") == {ada["email"]}
    assert await search("example.org") == {ada["email"]}
    assert await search("GRACE@") == {grace["email"]}
    # LIKE wildcards in the query are literal characters, not patterns.
    assert await search("_") == {grace["email"]}
    assert await search("%") == set()
    assert await search("' OR '1'='1") == set()
    assert await search("nobody-matches-this") == set()

    # A deleted account is neither listed nor found.
    gone = await register(client, "gone@example.com")
    assert (await client.delete("/me", headers=bearer(gone))).status_code == 204
    assert await search("gone") == set()
    listed = await client.get("/admin/users", headers=bearer(admin))
    assert gone["user"]["id"] not in {user["id"] for user in listed.json()["users"]}
    gone_id = gone["user"]["id"]
    sessions = await client.get(f"/admin/users/{gone_id}/sessions", headers=bearer(admin))
    assert sessions.status_code == 404


BAD_LIST_PARAMETERS = [
    {"limit": "0"},
    {"limit": "201"},
    {"limit": "many"},
    {"cursor": "!!not a cursor!!"},
    {"cursor": "x" * 200},
    {"query": "x" * 10_000},
    {"query": "a\x00b"},
]


async def test_bad_list_parameters_are_422_problems(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    for params in BAD_LIST_PARAMETERS:
        response = await client.get("/admin/users", headers=bearer(admin), params=params)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_request"


# --- sessions -----------------------------------------------------------------------------


async def test_admin_lists_and_revokes_every_session_of_a_user(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    first = await register(client)
    second = await login(client)
    user_id = first["user"]["id"]

    listed = await client.get(f"/admin/users/{user_id}/sessions", headers=bearer(admin))
    assert listed.status_code == 200
    sessions = listed.json()["sessions"]
    assert {s["id"] for s in sessions} == {first["session_id"], second["session_id"]}
    for session in sessions:
        assert session["ip"] == "203.0.113.7"
        assert session["current"] is False
        assert {"created_at", "last_seen_at", "expires_at", "user_agent"} <= session.keys()

    revoked = await client.delete(f"/admin/users/{user_id}/sessions", headers=bearer(admin))
    assert revoked.status_code == 204
    for tokens in (first, second):
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 401
        again = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert again.status_code == 401
    after = await client.get(f"/admin/users/{user_id}/sessions", headers=bearer(admin))
    assert after.json() == {"sessions": []}
    # The admin's own session is untouched, and marked as the one asking.
    own = await client.get(f"/admin/users/{admin['user']['id']}/sessions", headers=bearer(admin))
    assert [(s["id"], s["current"]) for s in own.json()["sessions"]] == [
        (admin["session_id"], True)
    ]
    # The user may simply log in again.
    assert (await client.get("/me", headers=bearer(admin))).status_code == 200
    await login(client)

    recorded = await events(client, admin, user_id=user_id, type="session.revoked")
    assert {e["session_id"] for e in recorded} == {first["session_id"], second["session_id"]}
    assert {e["detail"]["reason"] for e in recorded} == {"admin"}


# --- disabling ----------------------------------------------------------------------------


async def test_disabling_ends_every_session_and_only_the_right_password_learns_it(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    first = await register(client)
    second = await login(client)
    user_id = first["user"]["id"]

    disabled = await client.post(f"/admin/users/{user_id}/disable", headers=bearer(admin))
    assert disabled.status_code == 200
    assert disabled.json()["id"] == user_id
    assert disabled.json()["email"] == "ada@example.com"
    for tokens in (first, second):
        me = await client.get("/me", headers=bearer(tokens))
        assert me.status_code == 401
        assert me.json()["code"] == "unauthorized"
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 401
    sessions = await client.get(f"/admin/users/{user_id}/sessions", headers=bearer(admin))
    assert sessions.json() == {"sessions": []}

    wrong = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": "not the password"}
    )
    unknown = await client.post(
        "/auth/login", json={"email": "nobody@example.com", "password": "not the password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert without_request_id(wrong.json()) == without_request_id(unknown.json())
    assert wrong.json()["code"] == "invalid_credentials"

    right = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert right.status_code == 403
    assert right.headers["content-type"] == "application/problem+json"
    assert right.json()["code"] == "account_disabled"
    assert "access_token" not in right.text
    grant = await client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "ada@example.com", "password": PASSWORD},
    )
    assert grant.status_code == 400
    assert grant.json()["error"] == "invalid_grant"

    recorded = await events(client, admin, user_id=user_id)
    types = [e["type"] for e in recorded]
    assert "user.disabled" in types
    revocations = [e for e in recorded if e["type"] == "session.revoked"]
    assert {e["session_id"] for e in revocations} == {first["session_id"], second["session_id"]}
    assert {e["detail"]["reason"] for e in revocations} == {"account_disabled"}

    enabled = await client.post(f"/admin/users/{user_id}/enable", headers=bearer(admin))
    assert enabled.status_code == 200
    assert enabled.json()["id"] == user_id
    fresh = await login(client)
    assert (await client.get("/me", headers=bearer(fresh))).status_code == 200
    # Enabling does not bring the ended sessions back.
    assert (await client.get("/me", headers=bearer(first))).status_code == 401
    assert "user.enabled" in [e["type"] for e in await events(client, admin, user_id=user_id)]
    # Repeating either action is harmless.
    for action in ("enable", "disable", "disable", "enable"):
        response = await client.post(f"/admin/users/{user_id}/{action}", headers=bearer(admin))
        assert response.status_code == 200, response.text
    await login(client)


# --- who may ------------------------------------------------------------------------------


async def test_non_admins_get_403_forbidden_on_every_admin_route(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    user = await register(client)
    for method, path in ADMIN_ROUTES:
        target = path.format(id=admin["user"]["id"])
        response = await client.request(method, target, headers=bearer(user))
        assert response.status_code == 403, target
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "forbidden"
        anonymous = await client.request(method, target)
        assert anonymous.status_code == 401, target
        assert anonymous.json()["code"] == "unauthorized"
    # Nothing happened to the admin.
    assert (await client.get("/me", headers=bearer(admin))).status_code == 200
    assert (await login(client, ADMIN_EMAIL))["user"]["is_admin"] is True


async def test_unknown_user_ids_are_404(client: AsyncClient, admin: dict[str, Any]) -> None:
    for method, path in USER_ROUTES:
        for user_id in (UNKNOWN_ID, "not-an-id", "A" * 32, "x" * 300, "%00"):
            response = await client.request(method, path.format(id=user_id), headers=bearer(admin))
            assert response.status_code == 404, (method, path, user_id)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "not_found"


async def test_admin_audit_filters_by_user_and_type(
    client: AsyncClient, admin: dict[str, Any]
) -> None:
    ada = (await register(client))["user"]["id"]
    grace = (await register(client, "grace@example.com"))["user"]["id"]
    await login(client)
    only_ada = await events(client, admin, user_id=ada)
    assert only_ada
    assert {e["user_id"] for e in only_ada} == {ada}
    assert [e["type"] for e in await events(client, admin, user_id=grace)] == ["user.registered"]
    logins = await events(client, admin, type="login.succeeded")
    assert {e["user_id"] for e in logins} == {admin["user"]["id"], ada}

    page = await client.get("/admin/audit", headers=bearer(admin), params={"limit": "1"})
    assert len(page.json()["events"]) == 1
    following = await client.get(
        "/admin/audit",
        headers=bearer(admin),
        params={"limit": "1", "cursor": page.json()["next_cursor"]},
    )
    assert following.json()["events"][0]["id"] != page.json()["events"][0]["id"]


# --- the CLI ------------------------------------------------------------------------------


async def test_cli_users_create_admin_makes_an_administrator(
    database_url: str, client: AsyncClient
) -> None:
    pw = PASSWORD  # stdin without a trailing newline, like `printf %s "$PW" | keyturn ...`
    (status, out, err), (plain_status, _, plain_err) = await asyncio.gather(
        run_cli(database_url, "users", "create", ADMIN_EMAIL, "--admin", "--name=Root", stdin=pw),
        run_cli(database_url, "users", "create", "plain@example.com", stdin=PASSWORD + "\n"),
    )
    assert status == 0, err
    assert plain_status == 0, plain_err
    assert "(admin)" in out
    tokens = await login(client, ADMIN_EMAIL)
    assert tokens["user"]["is_admin"] is True
    assert tokens["user"]["name"] == "Root"
    assert tokens["user"]["id"] in out
    assert (await client.get("/admin/users", headers=bearer(tokens))).status_code == 200
    plain = await login(client, "plain@example.com")
    assert plain["user"]["is_admin"] is False
    assert (await client.get("/admin/users", headers=bearer(plain))).status_code == 403


async def test_cli_users_promote_makes_an_existing_account_admin_at_once(
    database_url: str, client: AsyncClient
) -> None:
    tokens = await register(client)
    assert (await client.get("/admin/users", headers=bearer(tokens))).status_code == 403

    status, out, err = await run_cli(database_url, "users", "promote", "ADA@example.com")
    assert status == 0, err
    assert tokens["user"]["id"] in out
    # The same access token: being an admin is looked up on every request, not baked in.
    listed = await client.get("/admin/users", headers=bearer(tokens))
    assert listed.status_code == 200
    assert listed.json()["users"][0]["is_admin"] is True
    promoted = await events(client, tokens, type="user.promoted")
    assert [e["user_id"] for e in promoted] == [tokens["user"]["id"]]


async def test_cli_users_disable_and_enable_need_no_administrator(
    database_url: str, client: AsyncClient, admin: dict[str, Any]
) -> None:
    """The way back in when the only administrator disabled their own account."""
    own_id = admin["user"]["id"]
    disabled = await client.post(f"/admin/users/{own_id}/disable", headers=bearer(admin))
    assert disabled.status_code == 200
    refused = await client.post("/auth/login", json={"email": ADMIN_EMAIL, "password": PASSWORD})
    assert refused.json()["code"] == "account_disabled"

    status, out, err = await run_cli(database_url, "users", "enable", ADMIN_EMAIL)
    assert status == 0, err
    assert own_id in out
    again = await login(client, ADMIN_EMAIL)
    enabled = await events(client, again, type="user.enabled")
    assert [(e["user_id"], e["detail"].get("by_user_id")) for e in enabled] == [(own_id, None)]

    status, _, err = await run_cli(database_url, "users", "disable", ADMIN_EMAIL)
    assert status == 0, err
    assert (await client.get("/me", headers=bearer(again))).status_code == 401


async def test_cli_account_commands_fail_with_one_clear_line(tmp_path: Path) -> None:
    """A weak password or an unknown account: exit 1, one line naming the problem, no traceback."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}"
    results = await asyncio.gather(
        run_cli(database_url, "users", "create", "weak@example.com", stdin="hunter2"),
        run_cli(database_url, "users", "promote", "nobody@example.com"),
    )
    expected = ["at least 8 characters", "No such user"]
    for (status, _, err), message in zip(results, expected, strict=True):
        assert status == 1, err
        assert message in err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in results[0][2]
