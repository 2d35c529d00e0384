"""Public keys and health: /.well-known/jwks.json, /healthz, /readyz."""

import ipaddress
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from keyturn.errors import NotFound
from keyturn.metrics import CONTENT_TYPE
from keyturn.storage.migrate import is_current
from keyturn.storage.sessions import count_active_sessions

if TYPE_CHECKING:
    from keyturn.facade import Keyturn


def build_meta_router(keyturn: "Keyturn") -> APIRouter:
    router = APIRouter(prefix=keyturn.prefix, tags=["meta"])

    @router.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        await keyturn.keys.reload_if_stale()
        # Public keys only; caching briefly is safe because retired keys stay published.
        return JSONResponse(
            {"keys": keyturn.keys.ring.published}, headers={"Cache-Control": "public, max-age=60"}
        )

    @router.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD too
    @router.get("/healthz")
    async def healthz() -> Response:
        if await keyturn.database.ping():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    @router.head("/readyz", include_in_schema=False)
    @router.get("/readyz")
    async def readyz() -> Response:
        checks = {"database": await keyturn.database.ping()}
        if checks["database"]:
            try:
                checks["migrations"] = await is_current(keyturn.database)
            except Exception:
                checks["migrations"] = False
        if keyturn.settings.redis_url:
            checks["redis"] = await keyturn.throttle.ping()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text. `local`: loopback peers only (the socket, never X-Forwarded-For)."""
        mode = keyturn.settings.metrics
        peer = request.client.host if request.client else None
        # Behind a proxy on the same host every client looks like loopback: a forwarded
        # request is never "local".
        forwarded = "x-forwarded-for" in request.headers or "forwarded" in request.headers
        if mode == "off" or (mode == "local" and (forwarded or not _is_loopback(peer))):
            raise NotFound()
        async with keyturn.database.read() as conn:
            active = await count_active_sessions(conn, now=keyturn.clock())
        keyturn.metrics.active_sessions.set(active)
        return Response(keyturn.metrics.render(), media_type=CONTENT_TYPE)

    return router


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
