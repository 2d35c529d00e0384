"""Route classes that skip FastAPI's per-request machinery keep its answers (web/routes.py)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from keyturn.web.routes import shortcut_route


class Greeting(BaseModel):
    name: str


class Refused(Exception):
    pass


def _app() -> FastAPI:
    async def shortcut(request: Request) -> Response | None:
        body = await request.body()
        if body == b'{"name":"fast"}':
            return JSONResponse({"hello": "fast", "by": "shortcut"})
        if body == b'{"name":"refused"}':
            raise Refused()
        return None  # everything else: FastAPI's own handler

    async def greet(greeting: Greeting) -> dict[str, str]:
        return {"hello": greeting.name, "by": "endpoint"}

    app = FastAPI()
    app.router.add_api_route(
        "/greet", greet, methods=["POST"], route_class_override=shortcut_route(shortcut)
    )

    @app.exception_handler(Refused)
    async def refused(_request: Request, _error: Exception) -> Response:
        return JSONResponse({"refused": True}, status_code=403)

    return app


async def test_the_shortcut_answers_what_it_knows_and_the_endpoint_the_rest() -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
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
