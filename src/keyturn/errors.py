"""The domain error tree: every failure a caller can see, each with its stable wire `code`.

Services raise these; only `keyturn.web.problems` turns them into HTTP answers.
"""

from __future__ import annotations


class KeyturnError(Exception):
    """Base of every error keyturn raises on purpose."""

    code = "error"
    detail = "The request failed."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail


class ConfigError(KeyturnError):
    """A setting is invalid; the server must not start."""

    code = "invalid_configuration"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


class AuditLogBroken(KeyturnError):
    """The audit log's hash chain does not verify, so an operation that relies on it stopped."""

    code = "audit_log_broken"


# --- input -------------------------------------------------------------------------------


class InvalidRequest(KeyturnError):
    code = "invalid_request"
    detail = "The request is not valid."

    def __init__(self, detail: str | None = None, fields: list[dict[str, str]] | None = None):
        super().__init__(detail)
        self.fields = fields or []


class WeakPassword(InvalidRequest):
    code = "weak_password"
    detail = "The password is too weak."


class EmailTaken(KeyturnError):
    code = "email_taken"
    detail = "An account with this email already exists."


class NotFound(KeyturnError):
    code = "not_found"
    detail = "No such resource."


# --- authentication ----------------------------------------------------------------------


class AuthenticationError(KeyturnError):
    """The caller is not who they claim to be (HTTP 401 family)."""


class Unauthorized(AuthenticationError):
    code = "unauthorized"
    detail = "Authentication is required."

    def __init__(self, detail: str | None = None, *, token_presented: bool = False) -> None:
        super().__init__(detail)
        self.token_presented = token_presented


class InvalidCredentials(AuthenticationError):
    code = "invalid_credentials"
    detail = "The email or password is incorrect."


class InvalidRefreshToken(AuthenticationError):
    code = "invalid_refresh_token"
    detail = "The refresh token is invalid, expired or revoked."


class RefreshTokenReused(InvalidRefreshToken):
    code = "refresh_token_reused"
    detail = "The refresh token was already used; the session has been revoked."


class SessionExpired(InvalidRefreshToken):
    code = "session_expired"
    detail = "The session has expired; log in again."


class InvalidPassword(KeyturnError):
    """A password re-entered inside a session is wrong (HTTP 400, not 401: the session is fine)."""

    code = "invalid_password"
    detail = "The password is incorrect."


# --- authorization -----------------------------------------------------------------------


class Forbidden(KeyturnError):
    code = "forbidden"
    detail = "You are not allowed to do this."


class AccountDisabled(Forbidden):
    code = "account_disabled"
    detail = "This account is disabled."


class CsrfRejected(Forbidden):
    code = "csrf_failed"
    detail = "The request was refused as a possible cross-site request forgery."


class ReauthenticationRequired(Forbidden):
    code = "reauthentication_required"
    detail = "Enter your password again to do this."


# --- abuse -------------------------------------------------------------------------------


class TooManyRequests(KeyturnError):
    code = "rate_limited"
    detail = "Too many requests; try again later."

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class TooManyAttempts(TooManyRequests):
    code = "too_many_attempts"
    detail = "Too many failed logins for this account; try again later."


# --- availability ------------------------------------------------------------------------


class Unavailable(KeyturnError):
    code = "unavailable"
    detail = "The service is temporarily unavailable."
