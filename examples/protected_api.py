"""A host app: keyturn's routers mounted, and the app's own API group protected by one dependency.

Run it with `.venv/bin/uvicorn --factory examples.protected_api:create` (settings from the
environment).
"""

# No `from __future__ import annotations`: FastAPI resolves the Annotated aliases below at runtime.

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI

from keyturn import Keyturn, Principal, Session, User


def build_app(keyturn: Keyturn) -> FastAPI:
    app = FastAPI(title="Orders API", lifespan=keyturn.lifespan)
    keyturn.install(app)
    app.include_router(keyturn.router)

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"service": "orders"}  # public

    # Every route in this group needs a live keyturn session: one dependency protects them all.
    api = APIRouter(prefix="/api", dependencies=[Depends(keyturn.current_user)])
    CurrentUser = Annotated[User, Depends(keyturn.current_user)]
    CurrentSession = Annotated[Session, Depends(keyturn.current_session)]
    Fresh = Annotated[Principal, Depends(keyturn.fresh_session)]

    @api.get("/orders")
    async def orders(user: CurrentUser) -> dict[str, object]:
        return {"owner": user.email, "orders": ["#1001", "#1002"]}

    @api.get("/whoami")
    async def whoami(user: CurrentUser, session: CurrentSession) -> dict[str, str]:
        return {"user_id": user.id, "session_id": session.id}

    @api.post("/payout")
    async def payout(principal: Fresh) -> dict[str, str]:
        """Sensitive: needs the password entered in this session within KEYTURN_FRESH_AGE."""
        return {"status": "sent", "by": principal.user.id}

    app.include_router(api)
    return app


def create() -> FastAPI:
    """uvicorn factory: `uvicorn --factory examples.protected_api:create`."""
    return build_app(Keyturn())
