"""keyturn inside a host app: routers mounted, the host's own API group protected."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from examples.protected_api import build_app
from fastapi import Depends, FastAPI, HTTPException, Request

from keyturn import Keyturn, Settings
from tests.actions import PASSWORD, bearer, register
from tests.clock import FakeClock


@pytest.fixture
async def host(keyturn: Keyturn) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(keyturn))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_the_hosts_api_group_needs_a_session(host: httpx.AsyncClient) -> None:
    assert (await host.get("/")).status_code == 200
    anonymous = await host.get("/api/orders")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthorized"

    tokens = await register(host)
    orders = await host.get("/api/orders", headers=bearer(tokens))
    assert orders.status_code == 200
    assert orders.json()["owner"] == "ada@example.com"
    whoami = (await host.get("/api/whoami", headers=bearer(tokens))).json()
    assert whoami == {"user_id": tokens["user"]["id"], "session_id": tokens["session_id"]}


async def test_logout_through_keyturns_router_locks_the_host_api_at_once(
    host: httpx.AsyncClient,
) -> None:
    tokens = await register(host)
    assert (await host.post("/auth/logout", headers=bearer(tokens))).status_code == 204
    assert (await host.get("/api/orders", headers=bearer(tokens))).status_code == 401


async def test_fresh_session_dependency_demands_a_recent_password(
    host: httpx.AsyncClient, clock: FakeClock
) -> None:
    tokens = await register(host)
    assert (await host.post("/api/payout", headers=bearer(tokens))).status_code == 200
    clock.advance(601)
    stale = await host.post("/api/payout", headers=bearer(tokens))
    assert stale.status_code == 403
    assert stale.json()["code"] == "reauthentication_required"
    reauth = await host.post(
        "/auth/reauthenticate", headers=bearer(tokens), json={"password": PASSWORD}
    )
    assert reauth.status_code == 204
    assert (await host.post("/api/payout", headers=bearer(tokens))).status_code == 200


def test_public_api_is_what_the_package_exports() -> None:
    import keyturn

    assert set(keyturn.__all__) == {
        "Argon2Parameters",
        "Keyturn",
        "KeyturnError",
        "Principal",
        "Session",
        "Settings",
        "User",
        "load_settings",
    }
    for name in keyturn.__all__:
        assert getattr(keyturn, name) is not None


async def test_a_prefix_mounts_every_keyturn_route_under_it(settings: Settings) -> None:
    keyturn = Keyturn(settings, prefix="/identity")
    await keyturn.start(background=False)
    try:
        app = FastAPI()
        keyturn.install(app)
        app.include_router(keyturn.router)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            registered = await http.post(
                "/identity/auth/register", json={"email": "ada@example.com", "password": PASSWORD}
            )
            assert registered.status_code == 201
            me = await http.get("/identity/me", headers=bearer(registered.json()))
            assert me.status_code == 200
            assert (await http.get("/identity/.well-known/jwks.json")).status_code == 200
            assert (await http.post("/auth/register", json={})).status_code == 404
            document = (await http.get("/openapi.json")).json()
            assert (
                document["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"][
                    "password"
                ]["tokenUrl"]
                == "/identity/auth/token"
            )
    finally:
        await keyturn.stop()


async def test_a_dependency_the_host_adds_guards_even_the_fastest_routes(
    keyturn: Keyturn,
) -> None:
    def internal_only(request: Request) -> None:
        if request.headers.get("x-internal") != "yes":
            raise HTTPException(status_code=403, detail="internal callers only")

    app = FastAPI()
    keyturn.install(app)
    app.include_router(keyturn.router, dependencies=[Depends(internal_only)])
    inside = {"x-internal": "yes"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        tokens = (
            await http.post(
                "/auth/register",
                json={"email": "ada@example.com", "password": PASSWORD},
                headers=inside,
            )
        ).json()
        # GET /me and POST /auth/refresh normally skip FastAPI's dependency resolution.
        refresh = {"refresh_token": tokens["refresh_token"]}
        assert (await http.get("/me", headers=bearer(tokens))).status_code == 403
        assert (await http.post("/auth/refresh", json=refresh)).status_code == 403
        assert (await http.get("/me", headers={**bearer(tokens), **inside})).status_code == 200
        assert (await http.post("/auth/refresh", json=refresh, headers=inside)).status_code == 200
