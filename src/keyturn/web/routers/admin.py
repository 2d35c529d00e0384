"""/admin: users, their sessions, disabling accounts, and the whole audit log."""

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Response

from keyturn.errors import NotFound
from keyturn.services.context import ClientInfo
from keyturn.services.sessions import Principal
from keyturn.web.routers.auth import NOT_FOUND, PROBLEMS
from keyturn.web.routers.me import ID_PATTERN
from keyturn.web.routers.pagination import audit_page, decode_cursor, encode_cursor
from keyturn.web.schemas import (
    EventsOut,
    SessionOut,
    SessionsOut,
    UserOut,
    UsersOut,
)

if TYPE_CHECKING:
    from keyturn.facade import Keyturn


def _user_id(user_id: str) -> str:
    if not ID_PATTERN.match(user_id):
        raise NotFound("No such user.")
    return user_id


def build_admin_router(keyturn: "Keyturn") -> APIRouter:
    deps = keyturn.dependencies
    router = APIRouter(prefix=f"{keyturn.prefix}/admin", tags=["admin"], responses=PROBLEMS)
    Client = Annotated[ClientInfo, Depends(deps.client)]
    Admin = Annotated[Principal, Depends(deps.admin_principal)]

    @router.get("/users", response_model=UsersOut)
    async def list_users(
        _admin: Admin,
        query: Annotated[str | None, Query(max_length=320, pattern=r"^[^\x00]*$")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=128)] = None,
    ) -> UsersOut:
        after = decode_cursor(cursor, numeric=False)
        found, last_id = await keyturn.admin.search_users(
            query=query, limit=limit, after_id=after if isinstance(after, str) else None
        )
        return UsersOut(
            users=[UserOut.of(u) for u in found],
            next_cursor=encode_cursor(last_id) if last_id else None,
        )

    @router.get("/users/{user_id}/sessions", response_model=SessionsOut, responses=NOT_FOUND)
    async def user_sessions(user_id: str, admin: Admin) -> SessionsOut:
        found = await keyturn.admin.user_sessions(_user_id(user_id))
        # `current`: the session asking, as on /me/sessions (an admin may list their own).
        return SessionsOut(sessions=[SessionOut.of(s, admin.session.id) for s in found])

    @router.delete("/users/{user_id}/sessions", status_code=204, responses=NOT_FOUND)
    async def revoke_user_sessions(user_id: str, admin: Admin, client: Client) -> Response:
        await keyturn.admin.revoke_user_sessions(admin, _user_id(user_id), client)
        return Response(status_code=204)

    @router.post("/users/{user_id}/disable", response_model=UserOut, responses=NOT_FOUND)
    async def disable(user_id: str, admin: Admin, client: Client) -> UserOut:
        return UserOut.of(await keyturn.admin.set_disabled(admin, _user_id(user_id), True, client))

    @router.post("/users/{user_id}/enable", response_model=UserOut, responses=NOT_FOUND)
    async def enable(user_id: str, admin: Admin, client: Client) -> UserOut:
        return UserOut.of(await keyturn.admin.set_disabled(admin, _user_id(user_id), False, client))

    @router.get("/audit", response_model=EventsOut)
    async def audit(
        _admin: Admin,
        user_id: Annotated[str | None, Query(max_length=32, pattern=r"^[0-9a-f]{32}$")] = None,
        type: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_.]+$")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> EventsOut:
        return await audit_page(
            keyturn.audit, limit=limit, cursor=cursor, user_id=user_id, type=type
        )

    return router
