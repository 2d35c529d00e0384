"""Cookie mode for browser apps: tokens in HttpOnly cookies, and the CSRF defence they need.

A client opts in per request with the header `X-Token-Transport: cookie` on register, login
and refresh. Cookie-authenticated requests that change state must carry `X-CSRF-Protection: 1`:
a custom header cannot be sent cross-site without a CORS preflight, which keyturn never grants
(OWASP CSRF cheat sheet, "custom request headers"). Fetch Metadata (`Sec-Fetch-Site:
cross-site`) is refused outright as a second line.
"""

from __future__ import annotations

from fastapi import Request, Response

from keyturn.config import Settings
from keyturn.errors import CsrfRejected
from keyturn.services.sessions import IssuedTokens

ACCESS_COOKIE = "keyturn_access"
REFRESH_COOKIE = "keyturn_refresh"
TRANSPORT_HEADER = "x-token-transport"
CSRF_HEADER = "x-csrf-protection"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def wants_cookies(request: Request) -> bool:
    return request.headers.get(TRANSPORT_HEADER, "").strip().lower() == "cookie"


def refresh_path(prefix: str) -> str:
    return f"{prefix}/auth/refresh"


def set_session_cookies(
    response: Response, issued: IssuedTokens, settings: Settings, *, prefix: str
) -> None:
    secure = settings.cookie_secure
    response.set_cookie(
        ACCESS_COOKIE, issued.access_token, max_age=issued.expires_in, path="/",
        httponly=True, secure=secure, samesite="lax",
    )  # fmt: skip
    # The refresh cookie travels only to the refresh endpoint, nowhere else.
    response.set_cookie(
        REFRESH_COOKIE, issued.refresh_token, max_age=settings.session_max_ttl,
        path=refresh_path(prefix), httponly=True, secure=secure, samesite="lax",
    )  # fmt: skip


def clear_session_cookies(response: Response, settings: Settings, *, prefix: str) -> None:
    secure = settings.cookie_secure
    response.delete_cookie(ACCESS_COOKIE, path="/", httponly=True, secure=secure, samesite="lax")
    response.delete_cookie(
        REFRESH_COOKIE, path=refresh_path(prefix), httponly=True, secure=secure, samesite="lax"
    )


def check_csrf(request: Request) -> None:
    """Raise unless a cookie-authenticated, state-changing request proves it is same-site."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise CsrfRejected("Cross-site requests may not use session cookies.")
    if request.headers.get(CSRF_HEADER) != "1":
        raise CsrfRejected(f"Send the header {CSRF_HEADER}: 1 with cookie-authenticated requests.")
