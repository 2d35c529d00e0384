"""The one table from domain errors to RFC 9457 problem details, and the handlers that use it."""

from __future__ import annotations

import logging
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from keyturn import errors

log = logging.getLogger("keyturn.web")

PROBLEM_TYPE_BASE = "https://keyturn.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

# (status, title) per error class; the most specific class wins (looked up along the MRO).
STATUS: dict[type[errors.KeyturnError], tuple[int, str]] = {
    errors.InvalidRequest: (422, "Invalid request"),
    errors.WeakPassword: (422, "Weak password"),
    errors.EmailTaken: (409, "Email taken"),
    errors.NotFound: (404, "Not found"),
    errors.Unauthorized: (401, "Unauthorized"),
    errors.InvalidCredentials: (401, "Invalid credentials"),
    errors.InvalidRefreshToken: (401, "Invalid refresh token"),
    errors.RefreshTokenReused: (401, "Refresh token reused"),
    errors.SessionExpired: (401, "Session expired"),
    errors.InvalidPassword: (400, "Invalid password"),
    errors.Forbidden: (403, "Forbidden"),
    errors.AccountDisabled: (403, "Account disabled"),
    errors.ReauthenticationRequired: (403, "Reauthentication required"),
    errors.CsrfRejected: (403, "Cross-site request refused"),
    errors.TooManyRequests: (429, "Too many requests"),
    errors.TooManyAttempts: (429, "Too many attempts"),
    errors.Unavailable: (503, "Service unavailable"),
    errors.ConfigError: (500, "Server misconfigured"),
    errors.KeyturnError: (400, "Bad request"),
}

# Framework-level HTTP statuses that are not domain errors.
HTTP_CODES = {
    400: ("invalid_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("request_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def status_of(error: errors.KeyturnError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400, "Bad request"


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def problem_body(
    status: int, code: str, title: str, detail: str, request_id: str | None
) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    request_id: str | None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = problem_body(status, code, title, detail, request_id)
    if extra:
        body.update(extra)
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
    )


def error_headers(error: errors.KeyturnError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(error, errors.Unauthorized):
        headers["WWW-Authenticate"] = (
            'Bearer error="invalid_token"' if error.token_presented else "Bearer"
        )
    if isinstance(error, errors.TooManyRequests):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, errors.Unavailable):
        headers["Retry-After"] = "1"
    return headers


def problem_for(error: errors.KeyturnError, request_id: str | None) -> Response:
    status, title = status_of(error)
    extra: dict[str, Any] = {}
    if isinstance(error, errors.InvalidRequest) and error.fields:
        extra["errors"] = error.fields
    return problem(
        status,
        error.code,
        title,
        error.detail,
        request_id=request_id,
        headers=error_headers(error),
        extra=extra,
    )


async def on_keyturn_error(request: Request, error: Exception) -> Response:
    error = cast(errors.KeyturnError, error)
    if isinstance(error, errors.Unavailable):
        log.warning("unavailable: %s", error.detail, extra={"request_id": request_id_of(request)})
    return problem_for(error, request_id_of(request))


def field_errors(error: RequestValidationError) -> list[dict[str, str]]:
    fields = []
    for item in error.errors():
        location = [
            str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path")
        ]
        # Never echo the rejected input: it may be a password.
        fields.append({"field": ".".join(location) or "body", "message": str(item.get("msg", ""))})
    return fields


def invalid_fields(fields: list[dict[str, str]]) -> str:
    """The detail of a request that failed validation: the offending fields, by name only."""
    return f"Invalid or missing fields: {', '.join(sorted({f['field'] for f in fields}))}."


async def on_validation_error(request: Request, error: Exception) -> Response:
    error = cast(RequestValidationError, error)
    fields = field_errors(error)
    return problem(
        422,
        "invalid_request",
        "Invalid request",
        invalid_fields(fields),
        request_id=request_id_of(request),
        extra={"errors": fields},
    )


async def on_http_error(request: Request, error: Exception) -> Response:
    error = cast(StarletteHTTPException, error)
    status = error.status_code
    if status == 400:
        # FastAPI's "error parsing the body" (e.g. invalid UTF-8): a schema violation for us.
        status = 422
        code, title = "invalid_request", "Invalid request"
        detail = "The request body could not be parsed."
    else:
        code, title = HTTP_CODES.get(status, ("error", "Error"))
        detail = str(error.detail) if isinstance(error.detail, str) else title
    headers = dict(error.headers or {})
    return problem(status, code, title, detail, request_id=request_id_of(request), headers=headers)


async def on_unexpected_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error", exc_info=error, extra={"request_id": request_id_of(request)})
    return problem(
        500,
        "internal_error",
        "Internal server error",
        "Something went wrong on our side.",
        request_id=request_id_of(request),
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.KeyturnError, on_keyturn_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
