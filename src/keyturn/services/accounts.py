"""Accounts: register, log in, re-enter a password, change password, email or profile, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email

from keyturn.config import Settings
from keyturn.errors import (
    AccountDisabled,
    InvalidCredentials,
    InvalidPassword,
    InvalidRequest,
    KeyturnError,
    NotFound,
    ReauthenticationRequired,
)
from keyturn.ids import new_id
from keyturn.security.passwords import PasswordHasher, check_strength
from keyturn.services.audit import EventType, RevokeReason, event
from keyturn.services.context import ClientInfo, Clock
from keyturn.services.sessions import IssuedTokens, Principal, SessionService
from keyturn.services.throttle import Throttle
from keyturn.storage import audit as audit_store
from keyturn.storage import users as user_store
from keyturn.storage.database import Database
from keyturn.storage.records import User

UNUSABLE_PASSWORD = "!"  # noqa: S105 - never a valid argon2 hash, so nothing verifies against it


def event_by(
    principal: Principal, type: EventType, *, now: datetime, client: ClientInfo, **detail: Any
) -> dict[str, Any]:
    """An event done by the caller, in their current session."""
    return event(
        type, now=now, client=client, user_id=principal.user.id,
        session_id=principal.session.id, **detail,
    )  # fmt: skip


def canonical_email(raw: str) -> str:
    """The form an address is stored and compared in: validated, lower-cased."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized.lower()
    except (EmailNotValidError, UnicodeError):
        raise InvalidRequest(
            "The email address is not valid.",
            fields=[{"field": "email", "message": "not a valid email address"}],
        ) from None


class AccountService:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        clock: Clock,
        hasher: PasswordHasher,
        sessions: SessionService,
        throttle: Throttle,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.hasher = hasher
        self.sessions = sessions
        self.throttle = throttle

    async def create_user(
        self, email: str, password: str, *, name: str | None = None, is_admin: bool = False
    ) -> User:
        """A new account without a session (the CLI's `users create`)."""
        user, _ = await self._create(
            email, password, name=name, is_admin=is_admin, client=ClientInfo(), with_session=False
        )
        return user

    async def register(
        self, email: str, password: str, name: str | None, client: ClientInfo
    ) -> IssuedTokens:
        """A new account, logged in at once (a new session)."""
        _, issued = await self._create(
            email, password, name=name, is_admin=False, client=client, with_session=True
        )
        if issued is None:
            raise RuntimeError("registration opened no session")
        return issued

    async def _create(
        self,
        email: str,
        password: str,
        *,
        name: str | None,
        is_admin: bool,
        client: ClientInfo,
        with_session: bool,
    ) -> tuple[User, IssuedTokens | None]:
        email = canonical_email(email)
        # Hash before the transaction opens: no lock is ever held while argon2 runs.
        password_hash = await self.hasher.hash(check_strength(password, email=email))
        now = self.clock()
        async with self.database.write() as conn:
            user = await user_store.insert_user(
                conn,
                user_id=new_id(),
                email=email,
                name=name,
                password_hash=password_hash,
                is_admin=is_admin,
                now=now,
            )
            issued = (
                await self.sessions.open_session(conn, user, client, now=now)
                if with_session
                else None
            )
            registered = event(
                EventType.USER_REGISTERED,
                now=now,
                client=client,
                user_id=user.id,
                session_id=issued.session.id if issued else None,
                is_admin=is_admin,
            )
            await audit_store.append_events(conn, [registered])
        return user, issued

    async def login(self, email: str, password: str, client: ClientInfo) -> IssuedTokens:
        """Unknown email and wrong password cost one argon2 verification each and look alike."""
        try:
            issued = await self._login(email, password, client)
        except KeyturnError as error:
            self.sessions.metrics.logins.labels(error.code).inc()
            raise
        self.sessions.metrics.logins.labels("succeeded").inc()
        return issued

    async def _login(self, email: str, password: str, client: ClientInfo) -> IssuedTokens:
        try:
            email = canonical_email(email)
        except InvalidRequest:
            await self.hasher.verify_dummy(password)
            raise InvalidCredentials() from None
        failed_before = await self.throttle.check_login_allowed(email)
        user = await self.database.point_read(
            lambda conn: user_store.get_user_by_email(conn, email)
        )
        if user is None or user.is_deleted:
            await self.hasher.verify_dummy(password)
            await self._login_failed(email, None, "unknown_account", client)
            raise InvalidCredentials()
        if not await self.hasher.verify(user.password_hash, password):
            await self._login_failed(email, user.id, "invalid_password", client)
            raise InvalidCredentials()
        if user.is_disabled:
            # Only someone who knows the password learns that the account is disabled.
            await self._login_failed(email, user.id, "account_disabled", client)
            raise AccountDisabled()
        new_hash = (
            await self.hasher.hash(password)
            if self.hasher.needs_rehash(user.password_hash)
            else None
        )
        succeeded = event(EventType.LOGIN_SUCCEEDED, now=self.clock(), client=client)
        if new_hash is None:
            issued = await self.sessions.open_logged_session(user, client, succeeded)
        else:
            async with self.database.write() as conn:
                await user_store.update_user(conn, user.id, password_hash=new_hash)
                issued = await self.sessions.open_session(
                    conn, user, client, now=succeeded["occurred_at"]
                )
                logged = {**succeeded, "user_id": user.id, "session_id": issued.session.id}
                await audit_store.append_events(conn, [logged])
        if failed_before:
            await self.throttle.clear_login_failures(email)
        return issued

    async def _login_failed(
        self, email: str, user_id: str | None, reason: str, client: ClientInfo
    ) -> None:
        await self.throttle.record_login_failure(email)
        async with self.database.write() as conn:
            await audit_store.append_events(
                conn,
                [
                    event(
                        EventType.LOGIN_FAILED,
                        now=self.clock(),
                        client=client,
                        user_id=user_id,
                        reason=reason,
                    )
                ],
            )

    async def reauthenticate(self, principal: Principal, password: str, client: ClientInfo) -> None:
        """The password, entered again: the session counts as fresh from now."""
        await self._check_password(principal, password, client)
        now = self.clock()
        async with self.database.write() as conn:
            await self.sessions.mark_fresh(conn, principal.session.id, now)
            await audit_store.append_events(
                conn,
                [
                    event_by(
                        principal,
                        EventType.REAUTHENTICATED,
                        now=now,
                        client=client,
                    )
                ],
            )

    async def _check_password(
        self, principal: Principal, password: str, client: ClientInfo
    ) -> None:
        """A password typed inside a session: wrong guesses count against the account exactly
        like failed logins, so a stolen access token is no password-guessing oracle."""
        email = principal.user.email
        await self.throttle.check_login_allowed(email)
        if await self.hasher.verify(principal.user.password_hash, password):
            return
        await self.throttle.record_login_failure(email)
        failed = event_by(
            principal,
            EventType.REAUTHENTICATION_FAILED,
            now=self.clock(),
            client=client,
        )
        async with self.database.write() as conn:
            await audit_store.append_events(conn, [failed])
        raise InvalidPassword()

    def require_fresh(self, principal: Principal) -> None:
        if not principal.is_fresh(self.clock(), self.settings.fresh_age):
            raise ReauthenticationRequired()

    async def change_password(
        self, principal: Principal, current: str, new: str, client: ClientInfo
    ) -> None:
        """Every other session ends; this one stays and counts as fresh (the password was typed)."""
        await self._check_password(principal, current, client)
        new_hash = await self.hasher.hash(check_strength(new, email=principal.user.email))
        now = self.clock()
        async with self.database.write() as conn:
            await user_store.update_user(
                conn, principal.user.id, password_hash=new_hash, updated_at=now
            )
            await self.sessions.mark_fresh(conn, principal.session.id, now)
            await audit_store.append_events(
                conn,
                [
                    event_by(
                        principal,
                        EventType.PASSWORD_CHANGED,
                        now=now,
                        client=client,
                    )
                ],
            )
            await self.sessions.revoke_in(
                conn,
                user_id=principal.user.id,
                reason=RevokeReason.PASSWORD_CHANGED,
                client=client,
                now=now,
                except_session_id=principal.session.id,
                actor_session_id=principal.session.id,
            )

    async def update_profile(
        self, principal: Principal, name: str | None, client: ClientInfo
    ) -> User:
        now = self.clock()
        async with self.database.write() as conn:
            user = await user_store.update_user(conn, principal.user.id, name=name, updated_at=now)
            await audit_store.append_events(
                conn,
                [
                    event_by(
                        principal,
                        EventType.PROFILE_UPDATED,
                        now=now,
                        client=client,
                        fields=["name"],
                    )
                ],
            )
        return _still_there(user)

    async def change_email(self, principal: Principal, new_email: str, client: ClientInfo) -> User:
        self.require_fresh(principal)
        email = canonical_email(new_email)
        now = self.clock()
        async with self.database.write() as conn:
            user = await user_store.update_user(
                conn, principal.user.id, email=email, email_verified=False, updated_at=now
            )
            await audit_store.append_events(
                conn,
                [
                    event_by(
                        principal,
                        EventType.EMAIL_CHANGED,
                        now=now,
                        client=client,
                        previous_email=principal.user.email,
                        new_email=email,
                    )
                ],
            )
        return _still_there(user)

    async def delete_account(self, principal: Principal, client: ClientInfo) -> None:
        """Sessions end, the audit trail stays, and the email is freed for a new account."""
        self.require_fresh(principal)
        now = self.clock()
        user_id = principal.user.id
        async with self.database.write() as conn:
            await self.sessions.revoke_in(
                conn,
                user_id=user_id,
                reason=RevokeReason.ACCOUNT_DELETED,
                client=client,
                now=now,
                actor_session_id=principal.session.id,
            )
            await user_store.update_user(
                conn,
                user_id,
                email=f"deleted+{user_id}@invalid",
                name=None,
                password_hash=UNUSABLE_PASSWORD,
                deleted_at=now,
                updated_at=now,
            )
            await audit_store.append_events(
                conn,
                [
                    event(
                        EventType.USER_DELETED,
                        now=now,
                        client=client,
                        user_id=user_id,
                        session_id=principal.session.id,
                    )
                ],
            )

    async def get_user(self, user_id: str) -> User | None:
        async with self.database.read() as conn:
            return await user_store.get_user(conn, user_id)


def _still_there(user: User | None) -> User:
    """An update that found no row: the account was deleted concurrently."""
    if user is None:
        raise NotFound("No such user.")
    return user
