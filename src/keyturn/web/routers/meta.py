"""Public keys and health: /.well-known/jwks.json, /healthz, /readyz."""

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from keyturn.storage.migrate import is_current

if TYPE_CHECKING:
    from keyturn.facade import Keyturn


def build_meta_router(keyturn: "Keyturn") -> APIRouter:
    router = APIRouter(tags=["meta"])

    @router.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        await keyturn.keys.reload_if_stale()
        # Public keys only; caching briefly is safe because retired keys stay published.
        return JSONResponse(
            {"keys": keyturn.keys.ring.published}, headers={"Cache-Control": "public, max-age=60"}
        )

    @router.get("/healthz")
    async def healthz() -> Response:
        if await keyturn.database.ping():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

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

    return router
