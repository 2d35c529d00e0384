"""Route classes for the hottest endpoints: less of FastAPI's per-request machinery.

FastAPI's own handler reads the body, resolves every parameter, opens dependency scopes and
validates the answer on every request. On GET /me that was a quarter of the route's cost; on
POST /auth/refresh, with a body, three dependencies and a response model, over 40 % of its
instructions. Both classes keep the route's OpenAPI entry (it comes from the endpoint's
signature, `response_model` and `openapi_extra`, as before) and let errors reach the app's
exception handlers.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from fastapi import Request, Response
from fastapi.routing import APIRoute

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` and returns the finished `Response`
    (FastAPI's documented `get_route_handler` extension point)."""

    def get_route_handler(self) -> Handler:
        return cast(Handler, self.endpoint)


def shortcut_route(shortcut: Callable[[Request], Awaitable[Response | None]]) -> type[APIRoute]:
    """A route class that lets `shortcut` answer first and falls back to FastAPI's handler.

    `shortcut` answers the common, well-formed request itself and returns None for anything
    else (another content type, a body its model refuses, cookie mode), which then goes
    through the endpoint exactly as before, so every error keeps its status and body. The
    body it read stays cached on the request for the fallback.
    """

    class ShortcutRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            full = super().get_route_handler()

            async def handler(request: Request) -> Response:
                answered = await shortcut(request)
                return answered if answered is not None else await full(request)

            return handler

    return ShortcutRoute
