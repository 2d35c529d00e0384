"""/me: the caller's own account, sessions and audit trail."""

import re
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from keyturn.errors import NotFound
from keyturn.services.context import ClientInfo
from keyturn.services.sessions import Principal
from keyturn.storage.records import User
from keyturn.web.routers.auth import NOT_FOUND, PROBLEMS
from keyturn.web.routers.pagination import audit_page
from keyturn.web.routes import add_shortcut_route
from keyturn.web.schemas import (
    EmailChangeRequest,
    EventsOut,
    PasswordChangeRequest,
    ProfileUpdate,
    SessionOut,
    SessionsOut,
    UserJson,
    UserOut,
)

if TYPE_CHECKING:
    from keyturn.facade import Keyturn

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def build_me_router(keyturn: "Keyturn") -> APIRouter:
    deps = keyturn.dependencies
    router = APIRouter(prefix=f"{keyturn.prefix}/me", tags=["me"], responses=PROBLEMS)
    Client = Annotated[ClientInfo, Depends(deps.client)]
    CurrentPrincipal = Annotated[Principal, Depends(deps.principal)]

    # The session look-up hands back the same record for as long as its row is unchanged, so a
    # repeated GET /me skips building and serializing the model.
    user_json = UserJson()

    def answer(user: User) -> Response:
        return Response(user_json(user), media_type="application/json")

    async def me_shortcut(request: Request) -> Response:
        # The hottest route: the principal is called, not injected (see `shortcut_route`).
        return answer((await deps.principal(request)).user)

    async def me(principal: CurrentPrincipal) -> Response:
        return answer(principal.user)

    add_shortcut_route(router, "", me, me_shortcut, method="GET", response_model=UserOut)

    @router.patch("", response_model=UserOut)
    async def update_me(
        body: ProfileUpdate, principal: CurrentPrincipal, client: Client
    ) -> UserOut:
        return UserOut.of(await keyturn.accounts.update_profile(principal, body.name, client))

    @router.post("/password", status_code=204)
    async def change_password(
        body: PasswordChangeRequest, principal: CurrentPrincipal, client: Client
    ) -> Response:
        await keyturn.accounts.change_password(
            principal, body.current_password, body.new_password, client
        )
        return Response(status_code=204)

    @router.post("/email", response_model=UserOut)
    async def change_email(
        body: EmailChangeRequest, principal: CurrentPrincipal, client: Client
    ) -> UserOut:
        return UserOut.of(await keyturn.accounts.change_email(principal, body.new_email, client))

    @router.delete("", status_code=204)
    async def delete_me(principal: CurrentPrincipal, client: Client) -> Response:
        await keyturn.accounts.delete_account(principal, client)
        return Response(status_code=204)

    @router.get("/sessions", response_model=SessionsOut)
    async def my_sessions(principal: CurrentPrincipal) -> SessionsOut:
        found = await keyturn.sessions.list_active(principal.user.id)
        return SessionsOut(sessions=[SessionOut.of(s, principal.session.id) for s in found])

    @router.delete("/sessions/{session_id}", status_code=204, responses=NOT_FOUND)
    async def revoke_my_session(
        session_id: str, principal: CurrentPrincipal, client: Client
    ) -> Response:
        if not ID_PATTERN.match(session_id):
            raise NotFound("No such session.")
        await keyturn.sessions.revoke_own_session(principal, session_id, client)
        return Response(status_code=204)

    @router.get("/audit", response_model=EventsOut)
    async def my_audit(
        principal: CurrentPrincipal,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> EventsOut:
        return await audit_page(
            keyturn.audit, limit=limit, cursor=cursor, user_id=principal.user.id
        )

    return router
