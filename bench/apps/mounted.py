"""keyturn as a library: a host FastAPI app that mounts it and protects a route of its own.

Served by uvicorn from the bench (`uvicorn --factory bench.apps.mounted:create`), on the same
database as `keyturn serve`, so the tokens the bench got from the server work here too.
"""

# No `from __future__ import annotations`: FastAPI resolves the Annotated aliases at runtime.

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI

from keyturn import Keyturn, User


def create() -> FastAPI:
    keyturn = Keyturn()  # settings from the environment, as a host app would
    app = FastAPI(lifespan=keyturn.lifespan)
    keyturn.install(app)
    app.include_router(keyturn.router)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        """The baseline route, behind keyturn's middleware but no authentication."""
        return {"message": "hello"}

    api = APIRouter(prefix="/api")

    @api.get("/whoami")
    async def whoami(user: Annotated[User, Depends(keyturn.current_user)]) -> dict[str, str]:
        """The host app's own route, protected by keyturn (the session is checked every time)."""
        return {"user_id": user.id, "email": user.email}

    app.include_router(api)
    return app
