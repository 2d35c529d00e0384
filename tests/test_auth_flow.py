"""The core journey over HTTP (ASGI transport), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from httpx import AsyncClient

from keyturn import Keyturn
from tests.actions import PASSWORD, bearer, login, register
from tests.databases import CountedWrites


async def test_register_login_me_refresh_logout_journey(client: AsyncClient) -> None:
    registered = await register(client, name="Ada")
    assert registered["token_type"] == "Bearer"
    assert registered["user"]["email"] == "ada@example.com"
    assert registered["user"]["name"] == "Ada"
    assert registered["user"]["is_admin"] is False

    tokens = await login(client)
    assert tokens["session_id"] != registered["session_id"]
    me = await client.get("/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert me.json()["id"] == registered["user"]["id"]

    refreshed = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
    assert refreshed.json()["session_id"] == tokens["session_id"]

    assert (await client.post("/auth/logout", headers=bearer(tokens))).status_code == 204
    after = await client.get("/me", headers=bearer(refreshed.json()))
    assert after.status_code == 401
    assert after.json()["code"] == "unauthorized"
    assert after.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # The other session (from registration) is untouched by a local logout.
    assert (await client.get("/me", headers=bearer(registered))).status_code == 200


async def test_access_token_verifies_with_a_standard_jwt_library_and_the_jwks(
    client: AsyncClient,
) -> None:
    tokens = await register(client)
    keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
    assert all("d" not in key for key in keys), "a private key part was published"
    header = jwt.get_unverified_header(tokens["access_token"])
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        tokens["access_token"], public, algorithms=["EdDSA"], issuer="http://testserver"
    )
    assert claims["sub"] == tokens["user"]["id"]
    assert claims["sid"] == tokens["session_id"]
    assert {"iat", "exp", "jti"} <= claims.keys()
    assert claims["exp"] - claims["iat"] == tokens["expires_in"] == 900


async def test_unknown_email_and_wrong_password_get_the_same_answer(client: AsyncClient) -> None:
    await register(client)
    wrong = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": "not the password"}
    )
    unknown = await client.post(
        "/auth/login", json={"email": "nobody@example.com", "password": "not the password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert _without_request_id(wrong.json()) == _without_request_id(unknown.json())
    assert wrong.json()["code"] == "invalid_credentials"


async def test_email_is_case_insensitive_and_unique(client: AsyncClient) -> None:
    await register(client, email="Ada@Example.com")
    again = await client.post(
        "/auth/register", json={"email": "ada@example.COM", "password": PASSWORD}
    )
    assert again.status_code == 409
    assert again.json()["code"] == "email_taken"
    assert (await login(client, email="ADA@example.com"))["user"]["email"] == "ada@example.com"


@pytest.mark.parametrize(
    "password", ["short", "password123", "qwertyuiop", "ada@example.com", "x" * 1025]
)
async def test_weak_passwords_are_refused(client: AsyncClient, password: str) -> None:
    response = await client.post(
        "/auth/register", json={"email": "ada@example.com", "password": password}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "weak_password"
    assert password not in response.text


async def test_me_without_a_token_is_401_with_a_bare_challenge(client: AsyncClient) -> None:
    response = await client.get("/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_a_token_in_the_query_string_is_never_accepted(client: AsyncClient) -> None:
    tokens = await register(client)
    response = await client.get("/me", params={"access_token": tokens["access_token"]})
    assert response.status_code == 401


async def test_patch_me_changes_the_name_and_ignores_mass_assignment(client: AsyncClient) -> None:
    tokens = await register(client)
    response = await client.patch(
        "/me",
        headers=bearer(tokens),
        json={"name": "Countess", "is_admin": True, "email_verified": True, "id": "x"},
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Countess"
    assert response.json()["is_admin"] is False
    assert response.json()["email_verified"] is False
    assert response.json()["id"] == tokens["user"]["id"]


async def test_oauth2_password_and_refresh_grants(client: AsyncClient) -> None:
    await register(client)
    granted = await client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "ada@example.com", "password": PASSWORD},
    )
    assert granted.status_code == 200
    body = granted.json()
    assert body["token_type"] == "Bearer"
    assert {"access_token", "expires_in", "refresh_token"} <= body.keys()
    assert granted.headers["cache-control"] == "no-store"

    rotated = await client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] != body["refresh_token"]

    denied = await client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "ada@example.com", "password": "wrong pass"},
    )
    assert denied.status_code == 400
    assert denied.json()["error"] == "invalid_grant"
    unsupported = await client.post("/auth/token", data={"grant_type": "client_credentials"})
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    "request_body",
    [
        {"data": {}},
        {"json": {"grant_type": "password", "username": "a@example.com", "password": "x"}},
        {"data": {"grant_type": "password", "username": "a" * 400, "password": PASSWORD}},
    ],
    ids=["no grant_type", "a JSON body", "an oversized field"],
)
async def test_an_unreadable_token_request_is_an_rfc6749_invalid_request(
    client: AsyncClient, request_body: dict[str, Any]
) -> None:
    answer = await client.post("/auth/token", **request_body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == "invalid_request"
    assert PASSWORD not in answer.text


async def test_healthz_and_readyz_answer(client: AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "migrations": True}


async def test_openapi_document_and_docs_are_served(client: AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "/auth/login" in document["paths"]
    assert "OAuth2PasswordBearer" in document["components"]["securitySchemes"]
    # GET /me answers through a shortcut (web/routes.py) but is documented like the rest.
    me = document["paths"]["/me"]["get"]
    assert me["security"] == [{"OAuth2PasswordBearer": []}]
    ok = me["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/UserOut"}
    assert me["responses"]["401"]
    # So does POST /auth/refresh (its common case is answered by a shortcut, web/routes.py).
    refresh = document["paths"]["/auth/refresh"]["post"]
    body = refresh["requestBody"]["content"]["application/json"]["schema"]
    assert body["anyOf"][0] == {"$ref": "#/components/schemas/RefreshRequest"}
    ok = refresh["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TokenResponse"}
    assert {"401", "422", "429"} <= refresh["responses"].keys()
    assert (await client.get("/docs")).status_code == 200


async def test_refresh_answers_alike_through_its_shortcut_and_fastapis_handler(
    client: AsyncClient,
) -> None:
    tokens = await register(client)
    # Plain application/json takes the shortcut; with a charset it goes through FastAPI.
    answers = []
    for content_type in ("application/json", "application/json; charset=utf-8"):
        body = f'{{"refresh_token": "{tokens["refresh_token"]}"}}'
        answer = await client.post(
            "/auth/refresh", content=body, headers={"content-type": content_type}
        )
        assert answer.status_code == 200
        answers.append(answer)
        tokens = answer.json()
    fast, full = answers
    assert list(fast.json()) == list(full.json())
    assert fast.json()["user"] == full.json()["user"]
    assert fast.json()["session_id"] == full.json()["session_id"]
    for header in ("content-type", "cache-control", "x-content-type-options"):
        assert fast.headers[header] == full.headers[header]
    assert fast.json()["refresh_token"] != full.json()["refresh_token"]
    # Whatever the shortcut declines keeps FastAPI's answer: here, a token of the wrong type.
    refused = await client.post("/auth/refresh", json={"refresh_token": 12345})
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_request"


async def test_login_answers_alike_through_its_shortcut_and_fastapis_handler(
    client: AsyncClient,
) -> None:
    await register(client)
    body = f'{{"email": "ada@example.com", "password": "{PASSWORD}"}}'
    answers = []
    # Plain application/json takes the shortcut; with a charset it goes through FastAPI.
    for content_type in ("application/json", "application/json; charset=utf-8"):
        answer = await client.post(
            "/auth/login", content=body, headers={"content-type": content_type}
        )
        assert answer.status_code == 200
        answers.append(answer)
    fast, full = answers
    assert list(fast.json()) == list(full.json())
    assert fast.json()["user"] == full.json()["user"]
    assert fast.json()["session_id"] != full.json()["session_id"]
    for header in ("content-type", "cache-control", "x-content-type-options"):
        assert fast.headers[header] == full.headers[header]
    # Errors are the service's either way; what the shortcut declines keeps FastAPI's answer.
    wrong = await client.post("/auth/login", json={"email": "ada@example.com", "password": "no"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_credentials")
    malformed = await client.post("/auth/login", json={"email": "not-an-address", "password": "x"})
    assert (malformed.status_code, malformed.json()["code"]) == (422, "invalid_request")


async def test_a_login_commits_its_session_with_its_event_in_one_statement_on_postgresql(
    keyturn: Keyturn, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = await register(client)
    writes = CountedWrites(keyturn.database, monkeypatch)
    tokens = await login(client)
    if keyturn.database.postgres is not None:
        assert (writes.transactions, len(writes.statements)) == (0, 1)
    else:
        assert (writes.transactions, len(writes.statements)) == (1, 0)
    assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
    refreshed = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.json()["session_id"] == tokens["session_id"]
    events, _ = await keyturn.audit.list(limit=10, type="login.succeeded")
    assert [(e.user_id, e.session_id) for e in events] == [
        (registered["user"]["id"], tokens["session_id"])
    ]


async def test_a_login_statement_run_again_after_its_answer_was_lost_writes_nothing_more(
    keyturn: Keyturn, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Database.fetch_sql` runs a statement again on a fresh connection when the first one
    died, which may be after its COMMIT."""
    if keyturn.database.postgres is None:
        pytest.skip("PostgreSQL's one-statement login")
    registered = await register(client)
    fetch_sql = keyturn.database.fetch_sql

    async def committed_then_lost(sql: str, *args: Any) -> list[Any]:
        await fetch_sql(sql, *args)
        return await fetch_sql(sql, *args)

    monkeypatch.setattr(keyturn.database, "fetch_sql", committed_then_lost)
    tokens = await login(client)
    mine = await client.get("/me/sessions", headers=bearer(tokens))
    assert sorted(s["id"] for s in mine.json()["sessions"]) == sorted(
        [registered["session_id"], tokens["session_id"]]
    )
    events, _ = await keyturn.audit.list(limit=10, type="login.succeeded")
    assert [e.session_id for e in events] == [tokens["session_id"]]
    refreshed = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200


def _without_request_id(body: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in body.items() if k != "request_id"}
