"""Route classes that skip FastAPI's per-request machinery keep its answers (web/routes.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from keyturn import Keyturn, Settings
from keyturn.storage.records import User
from keyturn.web.routes import shortcut_route
from keyturn.web.schemas import TokenResponse, UserJson, UserOut, token_json


class Greeting(BaseModel):
    name: str


class Refused(Exception):
    pass


def _router() -> APIRouter:
    async def shortcut(request: Request) -> Response | None:
        body = await request.body()
        if body == b'{"name":"fast"}':
            return JSONResponse({"hello": "fast", "by": "shortcut"})
        if body == b'{"name":"refused"}':
            raise Refused()
        return None  # everything else: FastAPI's own handler

    async def greet(greeting: Greeting, sender: Annotated[str, Depends(_sender)]) -> dict[str, str]:
        return {"hello": greeting.name, "by": sender}

    router = APIRouter()
    router.add_api_route(
        "/greet", greet, methods=["POST"], route_class_override=shortcut_route(shortcut)
    )
    return router


def _sender() -> str:
    return "endpoint"


def _app(**include: object) -> FastAPI:
    app = FastAPI()
    app.include_router(_router(), **include)  # type: ignore[arg-type]

    @app.exception_handler(Refused)
    async def refused(_request: Request, _error: Exception) -> Response:
        return JSONResponse({"refused": True}, status_code=403)

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"content-type": "application/json"},
    )


async def test_the_shortcut_answers_what_it_knows_and_the_endpoint_the_rest() -> None:
    async with _client(_app()) as client:
        fast = await client.post("/greet", content=b'{"name":"fast"}')
        assert fast.json() == {"hello": "fast", "by": "shortcut"}
        # The shortcut read the body; the endpoint still gets it.
        slow = await client.post("/greet", json={"name": "ada"})
        assert slow.json() == {"hello": "ada", "by": "endpoint"}
        # What the shortcut passes on is validated as before.
        invalid = await client.post("/greet", json={"nom": "ada"})
        assert invalid.status_code == 422
        # An error raised in the shortcut reaches the app's exception handlers.
        refused = await client.post("/greet", content=b'{"name":"refused"}')
        assert (refused.status_code, refused.json()) == (403, {"refused": True})


def test_the_documented_operation_is_the_endpoints() -> None:
    document = _app().openapi()
    operation = document["paths"]["/greet"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Greeting"}


def _deny() -> None:
    raise HTTPException(status_code=403, detail="the host says no")


async def test_a_host_apps_own_dependencies_are_never_skipped() -> None:
    fast = b'{"name":"fast"}'
    async with _client(_app(dependencies=[Depends(_deny)])) as client:
        assert (await client.post("/greet", content=fast)).status_code == 403
    app_wide = FastAPI(dependencies=[Depends(_deny)])
    app_wide.include_router(_router())
    async with _client(app_wide) as client:
        assert (await client.post("/greet", content=fast)).status_code == 403


async def test_dependency_overrides_send_every_request_through_fastapi() -> None:
    app = _app()
    async with _client(app) as client:
        assert (await client.post("/greet", content=b'{"name":"fast"}')).json()["by"] == "shortcut"
        app.dependency_overrides[_sender] = lambda: "override"
        overridden = await client.post("/greet", content=b'{"name":"fast"}')
        assert overridden.json() == {"hello": "fast", "by": "override"}


def test_keyturns_hottest_routes_are_tried_first_and_the_rest_keep_their_order(
    tmp_path: Path,
) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    routes = [
        (getattr(route, "path", None), sorted(getattr(route, "methods", None) or []))
        for route in Keyturn(settings, prefix="/id").router.routes
    ]
    assert routes[:2] == [("/id/me", ["GET"]), ("/id/auth/refresh", ["POST"])]
    rest = [path for path, _ in routes[2:]]
    assert rest.index("/id/me/sessions") < rest.index("/id/auth/login")
    assert rest.index("/id/auth/login") < rest.index("/id/admin/users")


@pytest.mark.parametrize("name", [None, 'Ada "Countess" Lovelace', "Ådä ✓ \U0001d538 \u2028"])
def test_the_assembled_token_answer_is_the_models_own_json(name: str | None) -> None:
    now = datetime(2026, 11, 27, 12, 0, 0, 654321, tzinfo=UTC)
    user = User("a" * 32, "ada@example.com", name, "x", True, False, False, now, now, None)
    modelled = TokenResponse(
        access_token="header.payload.signature",
        expires_in=900,
        refresh_token="r" * 43,
        session_id="s" * 32,
        user=UserOut.of(user),
    )
    assembled = token_json(
        access_token="header.payload.signature",
        expires_in=900,
        refresh_token="r" * 43,
        session_id="s" * 32,
        user_json=UserJson()(user),
    )
    assert assembled == modelled.model_dump_json().encode()


def test_the_user_json_is_rebuilt_when_the_user_changes() -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    memo = UserJson()
    ada = User("a" * 32, "ada@example.com", "Ada", "x", False, False, False, now, now, None)
    assert b'"Ada"' in memo(ada)
    assert b'"Countess"' in memo(replace(ada, name="Countess"))
