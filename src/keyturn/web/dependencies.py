"""FastAPI dependencies: who is calling, from where, and whether they may do this.

A host app uses these to protect its own routes (`APIRouter(dependencies=[...])`).
"""

# No `from __future__ import annotations` here: FastAPI must see the real dependency objects.

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

from keyturn.errors import Forbidden, Unauthorized
from keyturn.services.context import ClientInfo
from keyturn.services.sessions import Principal
from keyturn.storage.records import Session, User
from keyturn.web.cookies import ACCESS_COOKIE, check_csrf
from keyturn.web.middleware import client_ip

if TYPE_CHECKING:
    from keyturn.facade import Keyturn

MAX_USER_AGENT = 512


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What a route can ask for; all bound to one `Keyturn`."""

    principal: "BearerPrincipal"
    current_user: Callable[..., Awaitable[User]]
    current_session: Callable[..., Awaitable[Session]]
    fresh_principal: Callable[..., Awaitable[Principal]]
    admin_principal: Callable[..., Awaitable[Principal]]
    client: Callable[..., Awaitable[ClientInfo]]


class BearerPrincipal(SecurityBase):
    """The caller behind a bearer token (or the access cookie), as one flat dependency.

    FastAPI resolves every level of nested dependencies on every request, and this one runs
    on every protected request: it reads the header itself instead of depending on
    `OAuth2PasswordBearer`. Being a `SecurityBase` with that scheme's model, it still declares
    the scheme in OpenAPI (Swagger's Authorize button). It never reads the query string.
    """

    def __init__(self, keyturn: "Keyturn", *, token_url: str) -> None:
        declared = OAuth2PasswordBearer(tokenUrl=token_url, auto_error=False)
        self.model = declared.model
        self.scheme_name = declared.scheme_name
        self._keyturn = keyturn

    async def __call__(self, request: Request) -> Principal:
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        if scheme.lower() != "bearer" or not token:
            token = request.cookies.get(ACCESS_COOKIE, "")
            if token:
                check_csrf(request)
        if not token:
            raise Unauthorized()
        found = await self._keyturn.sessions.authenticate(token)
        request.state.principal = found
        return found


def build_dependencies(keyturn: "Keyturn", *, token_url: str) -> Dependencies:
    trusted = keyturn.settings.trusted_proxies

    async def client(request: Request) -> ClientInfo:  # async: no thread-pool hop
        ip = getattr(request.state, "client_ip", None)
        if ip is None:  # host app without keyturn's middleware
            ip = client_ip(request.scope, trusted)
        # PostgreSQL text cannot hold NUL; uvicorn refuses it in a header, other servers may not.
        agent = request.headers.get("user-agent", "").replace("\x00", "")[:MAX_USER_AGENT]
        return ClientInfo(ip=ip, user_agent=agent or None)

    principal = BearerPrincipal(keyturn, token_url=token_url)

    async def current_user(found: Annotated[Principal, Depends(principal)]) -> User:
        return found.user

    async def current_session(found: Annotated[Principal, Depends(principal)]) -> Session:
        return found.session

    async def fresh_principal(found: Annotated[Principal, Depends(principal)]) -> Principal:
        keyturn.accounts.require_fresh(found)
        return found

    async def admin_principal(found: Annotated[Principal, Depends(principal)]) -> Principal:
        if not found.user.is_admin:
            raise Forbidden("Administrators only.")
        return found

    return Dependencies(
        principal=principal,
        current_user=current_user,
        current_session=current_session,
        fresh_principal=fresh_principal,
        admin_principal=admin_principal,
        client=client,
    )
