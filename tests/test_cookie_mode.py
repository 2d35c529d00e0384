"""Cookie mode for browsers: HttpOnly cookies, a path-scoped refresh cookie, and CSRF defence."""

from __future__ import annotations

from httpx import AsyncClient

from tests.actions import PASSWORD

COOKIE_MODE = {"X-Token-Transport": "cookie"}
CSRF = {"X-CSRF-Protection": "1"}


async def _login_with_cookies(client: AsyncClient) -> None:
    await client.post("/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    response = await client.post(
        "/auth/login",
        json={"email": "ada@example.com", "password": PASSWORD},
        headers=COOKIE_MODE,
    )
    assert response.status_code == 200
    assert response.json()["access_token"] is None, "a cookie client must not see the token"
    assert response.json()["refresh_token"] is None


async def test_login_in_cookie_mode_sets_httponly_lax_cookies(client: AsyncClient) -> None:
    await client.post("/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    response = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}, headers=COOKIE_MODE
    )
    cookies = response.headers.get_list("set-cookie")
    access = next(c for c in cookies if c.startswith("keyturn_access="))
    refresh = next(c for c in cookies if c.startswith("keyturn_refresh="))
    for cookie in (access, refresh):
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
    assert "Path=/auth/refresh" in refresh, "the refresh cookie must be scoped to the refresh path"
    assert "Path=/;" in access or access.endswith("Path=/")


async def test_cookie_authenticates_reads_without_any_header(client: AsyncClient) -> None:
    await _login_with_cookies(client)
    assert (await client.get("/me")).status_code == 200


async def test_cookie_authenticated_writes_need_the_csrf_header(client: AsyncClient) -> None:
    await _login_with_cookies(client)
    forged = await client.patch("/me", json={"name": "Mallory"})
    assert forged.status_code == 403
    assert forged.json()["code"] == "csrf_failed"
    cross_site = await client.patch(
        "/me", json={"name": "Mallory"}, headers={**CSRF, "Sec-Fetch-Site": "cross-site"}
    )
    assert cross_site.status_code == 403
    allowed = await client.patch("/me", json={"name": "Ada"}, headers=CSRF)
    assert allowed.status_code == 200


async def test_refresh_from_the_cookie_rotates_both_cookies(client: AsyncClient) -> None:
    await _login_with_cookies(client)
    old_refresh = client.cookies.get("keyturn_refresh")
    without_csrf = await client.post("/auth/refresh")
    assert without_csrf.status_code == 403
    rotated = await client.post("/auth/refresh", headers=CSRF)
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] is None
    assert client.cookies.get("keyturn_refresh") not in (None, old_refresh)
    assert (await client.get("/me")).status_code == 200


async def test_logout_clears_the_cookies(client: AsyncClient) -> None:
    await _login_with_cookies(client)
    response = await client.post("/auth/logout", headers=CSRF)
    assert response.status_code == 204
    cleared = response.headers.get_list("set-cookie")
    assert any(c.startswith('keyturn_access=""') or "Max-Age=0" in c for c in cleared)
    assert (await client.get("/me")).status_code == 401


async def test_bearer_clients_are_unaffected_by_the_csrf_rule(client: AsyncClient) -> None:
    registered = await client.post(
        "/auth/register", json={"email": "bob@example.com", "password": PASSWORD}
    )
    token = registered.json()["access_token"]
    response = await client.patch(
        "/me", json={"name": "Bob"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert "set-cookie" not in registered.headers
