"""A route class for the hottest endpoints: less of FastAPI's per-request machinery.

FastAPI's own handler reads the body, resolves every parameter, opens dependency scopes and
validates the answer on every request. On GET /me that was a quarter of the route's cost; on
POST /auth/refresh, with a body, three dependencies and a response model, about a third of its
instructions. The route keeps its OpenAPI entry (it comes from the endpoint, as before) and
errors still reach the app's exception handlers.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import fastapi.routing
from fastapi import Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute, APIRouter

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Shortcut = Callable[[Request], Awaitable[Response | None]]

# FastAPI 0.165 keeps an included router nested: it builds each included route's handler with
# this variable naming the route as included (its dependencies, response class, overrides
# provider), and its own `get_route_handler` reads it the same way. Older versions copied the
# route instead, so the route itself is then the answer. tests/test_routes.py pins the result.
_INCLUDED_AS = getattr(fastapi.routing, "_effective_route_context_var", None)


def _as_included(route: APIRoute) -> Any:
    context = _INCLUDED_AS.get() if _INCLUDED_AS is not None else None
    return context if getattr(context, "original_route", None) is route else route


def shortcut_route(shortcut: Shortcut) -> type[APIRoute]:
    """A route class that lets `shortcut` answer first and falls back to FastAPI's handler.

    `shortcut` answers the common, well-formed request itself and returns None for anything
    else (another content type, a body its model refuses, cookie mode), which then goes
    through the endpoint exactly as before, so every error keeps its status and body. The
    body it read stays cached on the request for the fallback.

    It stands aside whenever the route is not plain keyturn: dependencies a host app added
    (`include_router(..., dependencies=...)` or app-wide), another response class, or any
    `dependency_overrides` on the app. FastAPI's handler then runs every time.
    """

    class ShortcutRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            full = super().get_route_handler()
            route = _as_included(self)
            if route.dependencies or not isinstance(route.response_class, DefaultPlaceholder):
                return full
            provider = route.dependency_overrides_provider

            async def handler(request: Request) -> Response:
                if getattr(provider, "dependency_overrides", None):
                    return await full(request)
                answered = await shortcut(request)
                return answered if answered is not None else await full(request)

            return handler

    return ShortcutRoute


def add_shortcut_route(
    router: APIRouter,
    path: str,
    endpoint: Callable[..., Any],
    shortcut: Shortcut,
    *,
    method: str,
    response_model: Any,
) -> None:
    """`endpoint` at `path`, with `shortcut` answering first (see `shortcut_route`)."""
    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        response_model=response_model,
        route_class_override=shortcut_route(shortcut),
    )
