"""/auth: register, log in, OAuth2 token endpoint, refresh, log out, revoke, re-authenticate."""

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from keyturn import errors
from keyturn.services.context import ClientInfo
from keyturn.services.sessions import IssuedTokens, Principal
from keyturn.services.throttle import Action
from keyturn.web.cookies import (
    REFRESH_COOKIE,
    check_csrf,
    clear_session_cookies,
    set_session_cookies,
    wants_cookies,
)
from keyturn.web.problems import field_errors, invalid_fields, problem_body, request_id_of
from keyturn.web.routes import Handler, add_shortcut_route
from keyturn.web.schemas import (
    LoginRequest,
    OAuthTokenResponse,
    PasswordRequest,
    Problem,
    RefreshRequest,
    RegisterRequest,
    RevokeRequest,
    TokenResponse,
    UserJson,
    UserOut,
    token_json,
)

if TYPE_CHECKING:
    from keyturn.facade import Keyturn

_Body = TypeVar("_Body", bound=BaseModel)

# Problems are sent as application/problem+json; the schema must be declared there, or OpenAPI
# clients (and Schemathesis) validate nothing. `model` registers the Problem component.
PROBLEM: dict[str, Any] = {
    "model": Problem,
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: PROBLEM for code in (400, 401, 403, 409, 422, 429)
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: PROBLEM}


def token_response(issued: IssuedTokens, *, in_cookies: bool = False) -> TokenResponse:
    """The token response; in cookie mode the tokens are in HttpOnly cookies, not the body."""
    return TokenResponse(
        access_token=None if in_cookies else issued.access_token,
        expires_in=issued.expires_in,
        refresh_token=None if in_cookies else issued.refresh_token,
        session_id=issued.session.id,
        user=UserOut.of(issued.user),
    )


def build_auth_router(keyturn: "Keyturn") -> APIRouter:
    deps = keyturn.dependencies
    router = APIRouter(prefix=f"{keyturn.prefix}/auth", tags=["auth"], responses=PROBLEMS)
    Client = Annotated[ClientInfo, Depends(deps.client)]
    CurrentPrincipal = Annotated[Principal, Depends(deps.principal)]
    user_json = UserJson()

    def answer(request: Request, response: Response, issued: IssuedTokens) -> TokenResponse:
        in_cookies = wants_cookies(request)
        if in_cookies:
            set_session_cookies(response, issued, keyturn.settings, prefix=keyturn.prefix)
        return token_response(issued, in_cookies=in_cookies)

    @router.post("/register", status_code=201, response_model=TokenResponse)
    async def register(
        body: RegisterRequest, client: Client, request: Request, response: Response
    ) -> TokenResponse:
        await keyturn.throttle.hit(Action.REGISTER, client.ip)
        issued = await keyturn.accounts.register(body.email, body.password, body.name, client)
        return answer(request, response, issued)

    def token_bytes(issued: IssuedTokens) -> Response:
        """`answer` for a client that takes its tokens in the body, without the response
        model's validation and serialization (the same bytes)."""
        return Response(
            token_json(
                access_token=issued.access_token,
                expires_in=issued.expires_in,
                refresh_token=issued.refresh_token,
                session_id=issued.session.id,
                user_json=user_json(issued.user),
            ),
            media_type="application/json",
        )

    async def login(
        body: LoginRequest, client: Client, request: Request, response: Response
    ) -> TokenResponse:
        await keyturn.throttle.hit(Action.LOGIN, client.ip)
        issued = await keyturn.accounts.login(body.email, body.password, client)
        return answer(request, response, issued)

    async def login_shortcut(request: Request) -> Response | None:
        """`login` for a well-formed JSON body, without FastAPI's parameter machinery; None
        for everything else (see `shortcut_route`). Logins share the cores with the hashing
        threads: what the event loop spends on one, the hashes lose."""
        body = await _json_body(request, LoginRequest)
        if body is None:
            return None
        client = await deps.client(request)
        await keyturn.throttle.hit(Action.LOGIN, client.ip)
        return token_bytes(await keyturn.accounts.login(body.email, body.password, client))

    add_shortcut_route(
        router, "/login", login, login_shortcut, method="POST", response_model=TokenResponse
    )

    async def token(
        request: Request,
        client: Client,
        grant_type: Annotated[str, Form()],
        username: Annotated[str | None, Form(max_length=320)] = None,
        password: Annotated[str | None, Form(max_length=4096)] = None,
        refresh_token: Annotated[str | None, Form(max_length=4096)] = None,
        scope: Annotated[str | None, Form(max_length=1024)] = None,
    ) -> Response:
        """RFC 6749 token endpoint: `password` and `refresh_token` grants, section 5 answers."""
        await keyturn.throttle.hit(Action.TOKEN, client.ip)
        try:
            if grant_type == "password":
                if not username or not password:
                    raise _OAuthError("invalid_request", "username and password are required")
                issued = await keyturn.accounts.login(username, password, client)
            elif grant_type == "refresh_token":
                if not refresh_token:
                    raise _OAuthError("invalid_request", "refresh_token is required")
                issued = await keyturn.sessions.refresh(refresh_token, client)
            else:
                raise _OAuthError("unsupported_grant_type", "use password or refresh_token")
        except _OAuthError as error:
            return _oauth_error(request, error.error, error.description)
        except (errors.AuthenticationError, errors.AccountDisabled) as error:
            return _oauth_error(request, "invalid_grant", error.detail, code=error.code)
        body = OAuthTokenResponse(
            access_token=issued.access_token,
            expires_in=issued.expires_in,
            refresh_token=issued.refresh_token,
            session_id=issued.session.id,
        )
        return JSONResponse(body.model_dump(), headers={"Pragma": "no-cache"})

    router.add_api_route(
        "/token",
        token,
        methods=["POST"],
        response_model=OAuthTokenResponse,
        route_class_override=_OAuthRoute,
    )

    async def refresh(
        client: Client, request: Request, response: Response, body: RefreshRequest | None = None
    ) -> TokenResponse:
        """The token from the body; or, for cookie clients, from the refresh cookie."""
        await keyturn.throttle.hit(Action.REFRESH, client.ip)
        if body is not None:
            issued = await keyturn.sessions.refresh(body.refresh_token, client)
            return answer(request, response, issued)
        cookie = request.cookies.get(REFRESH_COOKIE)
        if not cookie:
            raise errors.InvalidRequest(
                "A refresh_token is required.",
                fields=[{"field": "refresh_token", "message": "Field required"}],
            )
        check_csrf(request)
        issued = await keyturn.sessions.refresh(cookie, client)
        set_session_cookies(response, issued, keyturn.settings, prefix=keyturn.prefix)
        return token_response(issued, in_cookies=True)

    async def refresh_shortcut(request: Request) -> Response | None:
        """`refresh` for a JSON body with a well-formed token, called without FastAPI's
        parameter machinery; None for everything else (see `shortcut_route`)."""
        body = await _json_body(request, RefreshRequest)
        if body is None:
            return None
        client = await deps.client(request)
        await keyturn.throttle.hit(Action.REFRESH, client.ip)
        return token_bytes(await keyturn.sessions.refresh(body.refresh_token, client))

    add_shortcut_route(
        router, "/refresh", refresh, refresh_shortcut, method="POST", response_model=TokenResponse
    )

    @router.post("/logout", status_code=204)
    async def logout(
        principal: CurrentPrincipal,
        client: Client,
        scope: Annotated[Literal["local", "others", "global"], Query()] = "local",
    ) -> Response:
        await keyturn.sessions.logout(principal, scope, client)
        response = Response(status_code=204)
        if scope != "others":
            clear_session_cookies(response, keyturn.settings, prefix=keyturn.prefix)
        return response

    @router.post("/revoke", status_code=200, response_class=Response)
    async def revoke(request: Request, client: Client) -> Response:
        """RFC 7009: always 200, whether or not the token was known."""
        token = await _revocation_token(request)
        if token:
            await keyturn.sessions.revoke_token(token, client)
        return Response(status_code=200)

    @router.post("/reauthenticate", status_code=204)
    async def reauthenticate(
        body: PasswordRequest, principal: CurrentPrincipal, client: Client
    ) -> Response:
        await keyturn.throttle.hit(Action.REAUTHENTICATE, client.ip)
        await keyturn.accounts.reauthenticate(principal, body.password, client)
        return Response(status_code=204)

    return router


async def _json_body(request: Request, model: type[_Body]) -> _Body | None:
    """A shortcut's body: plain JSON that `model` accepts, from a client that takes its tokens
    in the body; None for anything else, which FastAPI's handler then answers."""
    if request.headers.get("content-type") != "application/json" or wants_cookies(request):
        return None
    try:
        return model.model_validate_json(await request.body())
    except ValidationError:
        return None


class _OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description


class _OAuthRoute(APIRoute):
    """The token endpoint answers a request it cannot read (a missing `grant_type`, a JSON body,
    an oversized field) as RFC 6749 section 5.2 says, `400 invalid_request`, like its other
    errors: an OAuth client parses that body, not the 422 problem of the rest of the API."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def oauth_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as error:
                described = invalid_fields(field_errors(error))
                return _oauth_error(request, "invalid_request", described)

        return oauth_handler


def _oauth_error(
    request: Request, error: str, description: str, *, code: str | None = None
) -> Response:
    """RFC 6749 section 5.2 body, with our problem fields beside it."""
    body = {
        "error": error,
        "error_description": description,
        **problem_body(
            400, code or error, "Token request failed", description, request_id_of(request)
        ),
    }
    return JSONResponse(body, status_code=400, headers={"Pragma": "no-cache"})


async def _revocation_token(request: Request) -> str | None:
    """`token` from a form (RFC 7009) or a JSON body."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            return RevokeRequest.model_validate_json(await request.body()).token
        form = await request.form()
        value = form.get("token")
        return RevokeRequest(token=value).token if isinstance(value, str) else None
    except (ValidationError, ValueError, UnicodeDecodeError):
        return None  # "200 always" (CONTRACT section 5): nothing to revoke
