"""Hardening at the HTTP edge: caching, sniffing, CORS, methods, mass assignment, hostile input.

Hostile input runs on SQLite and PostgreSQL: the two refuse different things (PostgreSQL has no
NUL in text), and either way the answer must be a 4xx problem, never a 500.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keyturn import Keyturn
from keyturn.web.app import create_app
from tests.actions import PASSWORD, bearer, login, register

LEAKS = ("Traceback", "sqlalchemy", "asyncpg", "sqlite3", "SELECT ", "INSERT ", 'File "')


@pytest.fixture
async def raw(keyturn: Keyturn) -> AsyncIterator[httpx.AsyncClient]:
    """Like `client`, but a server error comes back as a response instead of an exception."""
    transport = httpx.ASGITransport(
        app=create_app(keyturn), client=("203.0.113.7", 4321), raise_app_exceptions=False
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def admin(keyturn: Keyturn, raw: httpx.AsyncClient) -> dict[str, Any]:
    await keyturn.accounts.create_user("root@example.com", PASSWORD, is_admin=True)
    return await login(raw, "root@example.com")


def assert_problem(response: httpx.Response, *, statuses: range = range(400, 500)) -> None:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    for leak in LEAKS:
        assert leak not in response.text, response.text[:300]
    if response.status_code == 400 and response.request.url.path.endswith("/auth/token"):
        # RFC 6749 section 5.2 body (with the problem fields beside it).
        assert response.json()["error"]
        return
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["x-request-id"]


# --- headers ------------------------------------------------------------------------------


async def test_token_and_user_responses_are_never_cached(
    raw: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    tokens = await register(raw)
    answers = [
        await raw.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD}),
        await raw.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        await raw.post(
            "/auth/token",
            data={"grant_type": "password", "username": "ada@example.com", "password": PASSWORD},
        ),
        await raw.get("/me", headers=bearer(tokens)),
        await raw.patch("/me", headers=bearer(tokens), json={"name": "Ada"}),
        await raw.get("/me/sessions", headers=bearer(tokens)),
        await raw.get("/me/audit", headers=bearer(tokens)),
        await raw.get("/admin/users", headers=bearer(admin)),
        await raw.get(f"/admin/users/{tokens['user']['id']}/sessions", headers=bearer(admin)),
        await raw.get("/admin/audit", headers=bearer(admin)),
        await raw.get("/me"),
        await raw.post("/auth/login", json={"email": "ada@example.com", "password": "wrong one"}),
    ]
    for response in answers:
        assert response.status_code < 500
        assert response.headers["cache-control"] == "no-store", response.request.url
    token_endpoint = answers[2]
    assert token_endpoint.headers["pragma"] == "no-cache"  # RFC 6749 section 5.1


async def test_every_response_carries_nosniff_and_its_own_request_id(
    raw: httpx.AsyncClient,
) -> None:
    responses = [
        await raw.get("/healthz"),
        await raw.get("/.well-known/jwks.json"),
        await raw.get("/openapi.json"),
        await raw.get("/no/such/path"),
        await raw.put("/me"),
        await raw.get("/me"),
        await raw.post("/auth/register", json={}),
        await raw.post("/auth/login", content=b"{" + b" " * 70_000 + b"}"),
    ]
    ids = set()
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff"
        ids.add(response.headers["x-request-id"])
    assert len(ids) == len(responses)
    # A client's own X-Request-ID is not believed (no trusted proxy is configured).
    echoed = await raw.get("/healthz", headers={"X-Request-ID": "chosen-by-the-client"})
    assert echoed.headers["x-request-id"] != "chosen-by-the-client"


async def test_no_cross_origin_access_is_granted_to_any_origin(raw: httpx.AsyncClient) -> None:
    tokens = await register(raw)
    origin = {"Origin": "https://evil.example"}
    preflight = await raw.options(
        "/auth/login",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-csrf-protection",
        },
    )
    assert preflight.status_code == 405
    responses = [
        preflight,
        await raw.get("/me", headers={**origin, **bearer(tokens)}),
        await raw.post(
            "/auth/login",
            headers=origin,
            json={"email": "ada@example.com", "password": PASSWORD},
        ),
        await raw.get(
            "/me",
            headers={**origin, "Cookie": f"keyturn_access={tokens['access_token']}"},
        ),
    ]
    for response in responses:
        granted = [name for name in response.headers if name.startswith("access-control-")]
        assert granted == [], (response.request.url, granted)


async def test_wrong_methods_are_405_problems_naming_the_allowed_ones(
    raw: httpx.AsyncClient,
) -> None:
    for method, path, allowed in [
        ("GET", "/auth/login", "POST"),
        ("DELETE", "/auth/register", "POST"),
        ("GET", "/auth/logout", "POST"),
        ("PUT", "/me", "GET"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/admin/users", "GET"),
        ("TRACE", "/me", "GET"),
    ]:
        response = await raw.request(method, path)
        assert response.status_code == 405, (method, path)
        assert_problem(response)
        assert response.json()["code"] == "method_not_allowed"
        assert allowed in response.headers["allow"]


# --- mass assignment ----------------------------------------------------------------------

PRIVILEGED = {
    "is_admin": True,
    "email_verified": True,
    "id": "f" * 32,
    "is_disabled": True,
    "created_at": "2000-01-01T00:00:00Z",
    "password_hash": "$argon2id$forged",
}


async def test_register_ignores_fields_a_client_may_not_set(raw: httpx.AsyncClient) -> None:
    response = await raw.post(
        "/auth/register",
        json={"email": "ada@example.com", "password": PASSWORD, **PRIVILEGED},
    )
    assert response.status_code == 201
    user = response.json()["user"]
    assert user["is_admin"] is False
    assert user["email_verified"] is False
    assert user["id"] != PRIVILEGED["id"]
    assert not user["created_at"].startswith("2000")
    tokens = await login(raw)  # the password is the one sent, not the forged hash
    me = (await raw.get("/me", headers=bearer(tokens))).json()
    assert me == user
    assert (await raw.get("/admin/users", headers=bearer(tokens))).status_code == 403


async def test_patch_me_changes_only_the_name(raw: httpx.AsyncClient) -> None:
    tokens = await register(raw)
    patched = await raw.patch(
        "/me",
        headers=bearer(tokens),
        json={"name": "Ada", "email": "mallory@example.com", **PRIVILEGED},
    )
    assert patched.status_code == 200
    me = (await raw.get("/me", headers=bearer(tokens))).json()
    assert me == patched.json()
    assert me["name"] == "Ada"
    assert me["email"] == "ada@example.com"
    assert me["is_admin"] is False
    assert me["email_verified"] is False
    assert me["id"] == tokens["user"]["id"]
    assert (await raw.get("/admin/users", headers=bearer(tokens))).status_code == 403
    await login(raw)


# --- hostile input ------------------------------------------------------------------------

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
GOOD = {"email": "eve@example.com", "password": PASSWORD}
LONG = "x" * 10_000


def base64url(raw: str) -> str:
    """An opaque cursor made by hand: the encoding keyturn uses, around a hostile value."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# (method, path, request arguments); every one must get a 4xx problem.
ANONYMOUS_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/auth/register", {"content": b'{"email": ', "headers": JSON}),
    ("POST", "/auth/register", {"content": b"", "headers": JSON}),
    ("POST", "/auth/register", {"content": deep(5_000), "headers": JSON}),
    (
        "POST",
        "/auth/register",
        {"content": b'{"a":' * 3_000 + b"1" + b"}" * 3_000, "headers": JSON},
    ),
    ("POST", "/auth/register", {"content": b'{"email": 1' + b"9" * 5_000 + b"}", "headers": JSON}),
    ("POST", "/auth/register", {"content": b'{"email": "\xff\xfe@example.com"}', "headers": JSON}),
    ("POST", "/auth/register", {"content": b'{"email": "a@example.com", "password": "\\ud800x"}'}),
    ("POST", "/auth/register", {"json": {"email": 5, "password": ["x"], "name": {"a": 1}}}),
    ("POST", "/auth/register", {"json": {**GOOD, "email": True}}),
    ("POST", "/auth/register", {"json": None}),
    ("POST", "/auth/register", {"json": ["not", "an", "object"]}),
    ("POST", "/auth/register", {"json": "just a string"}),
    ("POST", "/auth/register", {"json": {**GOOD, "email": "a\x00@example.com"}}),
    ("POST", "/auth/register", {"json": {**GOOD, "password": "correct horse\x00battery"}}),
    ("POST", "/auth/register", {"json": {**GOOD, "name": "Ada\x00Lovelace"}}),
    ("POST", "/auth/register", {"json": {**GOOD, "email": "' OR 1=1 --@example.com"}}),
    ("POST", "/auth/register", {"json": {**GOOD, "email": "x'; DROP TABLE users; --"}}),
    ("POST", "/auth/register", {"json": {**GOOD, "email": LONG + "@example.com"}}),
    ("POST", "/auth/register", {"json": {**GOOD, "password": LONG}}),
    ("POST", "/auth/register", {"json": {**GOOD, "name": LONG}}),
    # A "simple" cross-site form post cannot pass for JSON (login CSRF).
    ("POST", "/auth/register", {"content": b'{"email": "e@example.com"}', "headers": FORM}),
    (
        "POST",
        "/auth/login",
        {"content": b'{"email": "e@example.com"}', "headers": {"content-type": "text/plain"}},
    ),
    ("POST", "/auth/login", {"json": {"email": "ada@example.com", "password": LONG}}),
    ("POST", "/auth/login", {"json": {"email": "ada@example.com' --", "password": "x"}}),
    ("POST", "/auth/login", {"json": {"email": "ada@example.com\x00", "password": "x\x00"}}),
    ("POST", "/auth/login", {"content": b"{" + b" " * 70_000 + b"}", "headers": JSON}),
    ("POST", "/auth/refresh", {"json": {"refresh_token": "a\x00b"}}),
    ("POST", "/auth/refresh", {"json": {"refresh_token": LONG}}),
    ("POST", "/auth/refresh", {"json": {"refresh_token": "' OR '1'='1"}}),
    ("POST", "/auth/refresh", {"json": {"refresh_token": 12345}}),
    (
        "POST",
        "/auth/token",
        {"data": {"grant_type": "password", "username": "a\x00", "password": "b\x00"}},
    ),
    ("POST", "/auth/token", {"data": {"grant_type": "refresh_token", "refresh_token": "a\x00b"}}),
    (
        "POST",
        "/auth/token",
        {"data": {"grant_type": "password", "username": LONG, "password": "x"}},
    ),
    ("POST", "/auth/token", {"data": {"grant_type": "' OR 1=1 --"}}),
    (
        "POST",
        "/auth/token",
        {"content": b"grant_type=password&username=%ff%fe&password=%00", "headers": FORM},
    ),
    ("POST", "/auth/token", {"content": b"\xff\xfe\x00", "headers": FORM}),
    (
        "POST",
        "/auth/token",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
    ),
    ("POST", "/auth/token", {"json": {"grant_type": "password"}}),
    ("GET", "/me", {"headers": {"Authorization": "Bearer " + LONG}}),
    ("GET", "/me", {"headers": {"Authorization": "Bearer a.b.c"}}),
    ("GET", "/me", {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}}),
    ("GET", "/me", {"headers": {"Authorization": b"Bearer \xff\xfe"}}),
    ("GET", "/me", {"headers": {"Cookie": "keyturn_access=" + "%00" * 100}}),
    ("POST", "/auth/logout", {"params": {"scope": "everything"}}),
]

AUTHENTICATED_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("PATCH", "/me", {"json": {"name": 42}}),
    ("PATCH", "/me", {"json": {"name": "x\x00y"}}),
    ("PATCH", "/me", {"json": {"name": LONG}}),
    ("PATCH", "/me", {"json": {}}),
    ("PATCH", "/me", {"content": b"\xff", "headers": JSON}),
    ("POST", "/me/email", {"json": {"new_email": "' OR 1=1 --"}}),
    ("POST", "/me/email", {"json": {"new_email": "a\x00@example.com"}}),
    ("POST", "/me/password", {"json": {"current_password": PASSWORD, "new_password": None}}),
    ("POST", "/me/password", {"json": {"current_password": LONG, "new_password": LONG}}),
    ("POST", "/auth/reauthenticate", {"json": {"password": LONG}}),
    ("POST", "/auth/reauthenticate", {"json": {"password": "' OR 1=1 --"}}),
    ("DELETE", "/me/sessions/' OR 1=1 --", {}),
    ("DELETE", "/me/sessions/" + "f" * 32, {}),
    ("DELETE", "/me/sessions/%00", {}),
    ("GET", "/me/audit", {"params": {"limit": "-1"}}),
    ("GET", "/me/audit", {"params": {"limit": "1e9"}}),
    ("GET", "/me/audit", {"params": {"cursor": "' OR 1=1 --"}}),
    ("GET", "/me/audit", {"params": {"cursor": base64url("9" * 30)}}),  # beyond BIGINT
    ("GET", "/me/audit", {"params": {"cursor": base64url("-1")}}),
]

ADMIN_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/admin/users", {"params": {"query": LONG}}),
    ("GET", "/admin/users", {"params": {"limit": "99999999999999999999999"}}),
    ("GET", "/admin/users", {"params": {"cursor": base64url("' OR 1=1 --")}}),
    ("GET", "/admin/audit", {"params": {"type": "login' OR '1'='1"}}),
    ("GET", "/admin/audit", {"params": {"user_id": "' OR 1=1 --"}}),
    ("GET", "/admin/audit", {"params": {"cursor": base64url("not a number")}}),
    ("GET", "/admin/audit", {"params": {"cursor": base64url("9" * 30)}}),
    ("POST", "/admin/users/' OR 1=1 --/disable", {}),
]


async def test_hostile_input_gets_a_4xx_problem_never_a_500(
    raw: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    tokens = await register(raw)
    for method, path, arguments in ANONYMOUS_CASES:
        assert_problem(await raw.request(method, path, **arguments))
    for cases, caller in ((AUTHENTICATED_CASES, tokens), (ADMIN_CASES, admin)):
        for method, path, arguments in cases:
            extra = dict(arguments)
            headers = {**extra.pop("headers", {}), **bearer(caller)}
            assert_problem(await raw.request(method, path, headers=headers, **extra))
    # RFC 7009: the revocation endpoint answers 200 whatever it is sent.
    for body in (b'{"token": "\xff"}', deep(3_000), b"token=%00", b"\xff\xfe"):
        for content_type in (JSON, FORM):
            revoked = await raw.post("/auth/revoke", content=body, headers=content_type)
            assert revoked.status_code == 200
    # Nothing above changed anything, and the server still works for both.
    assert (await raw.get("/me", headers=bearer(tokens))).json() == tokens["user"]
    assert (await raw.get("/me", headers=bearer(admin))).status_code == 200


async def test_odd_but_valid_input_is_stored_verbatim(
    raw: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    """SQL in a name or password is just text; non-ASCII and odd user agents are too."""
    name = "Robert'); DROP TABLE users;-- 😀 ünïcødé"
    password = "' OR '1'='1'; -- ünïcødé 😀"
    tokens = await register(raw, "bobby@example.com", password=password, name=name)
    assert tokens["user"]["name"] == name
    await login(raw, "bobby@example.com", password)
    for agent in (b"\xff\xfe latin-1 bytes", b"x" * 10_000, b"evil\x00agent\x01"):
        response = await raw.post(
            "/auth/login",
            headers={b"User-Agent": agent},
            json={"email": "bobby@example.com", "password": password},
        )
        assert response.status_code == 200, response.text[:300]
    sessions = await raw.get("/me/sessions", headers=bearer(tokens))
    agents = [s["user_agent"] for s in sessions.json()["sessions"] if s["user_agent"]]
    assert all(len(agent) <= 512 and "\x00" not in agent for agent in agents)
    found = await raw.get("/admin/users", headers=bearer(admin), params={"query": "DROP TABLE"})
    assert [user["name"] for user in found.json()["users"]] == [name]


async def test_oversized_bodies_are_refused_with_413_streamed_or_not(
    raw: httpx.AsyncClient,
) -> None:
    declared = await raw.post("/auth/register", content=b"x" * 70_000, headers=JSON)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(70):
            yield b"x" * 1_000

    streamed = await raw.post("/auth/register", content=chunks(), headers=JSON)
    assert streamed.status_code == 413
    for response in (declared, streamed):
        assert_problem(response)
        assert response.json()["code"] == "request_too_large"
    # 64 KiB exactly is allowed through to validation.
    at_limit = await raw.post("/auth/login", content=b" " * (64 * 1024), headers=JSON)
    assert at_limit.status_code == 422
