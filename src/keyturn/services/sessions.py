"""Sessions: issue, authenticate, rotate refresh tokens (with reuse detection), revoke, purge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from keyturn.config import Settings
from keyturn.errors import (
    InvalidRefreshToken,
    NotFound,
    RefreshTokenReused,
    SessionExpired,
    Unauthorized,
    Unavailable,
)
from keyturn.metrics import Metrics
from keyturn.security import opaque_tokens
from keyturn.security.access_tokens import AccessClaims, AccessTokenCodec
from keyturn.services.audit import EventType, RevokeReason, event
from keyturn.services.context import ClientInfo, Clock
from keyturn.services.keys import KeyService
from keyturn.storage import audit as audit_store
from keyturn.storage import keys as key_store
from keyturn.storage import sessions as session_store
from keyturn.storage.batching import TurnBatch
from keyturn.storage.database import Connection, Database
from keyturn.storage.records import Session, User
from keyturn.storage.session_lookup import SessionLookup

log = logging.getLogger("keyturn.sessions")


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """What login, register and refresh hand back (CONTRACT section 4, token response)."""

    access_token: str
    expires_in: int
    refresh_token: str
    session: Session
    user: User


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a protected route."""

    user: User
    session: Session
    claims: AccessClaims

    def is_fresh(self, now: datetime, fresh_age: int) -> bool:
        """Password entered in this session within `fresh_age` seconds (refresh never counts)."""
        return now - self.session.authenticated_at <= timedelta(seconds=fresh_age)


@dataclass(slots=True)
class _RotationAnswer:
    """A rotation's answer: the session and user, and the access token if it was signed while
    the commit was flushed (see `SessionService._rotate_many`)."""

    session: Session
    user: User
    access: tuple[str, int] | None = None  # the token and its lifetime

    def take_access(self) -> tuple[str, int] | None:
        """The signed token, once: a second request sharing this answer (the same refresh
        token twice in one batch) signs its own, as every response has its own `jti`."""
        access, self.access = self.access, None
        return access


ROTATION_SECRET = "refresh_rotation"  # noqa: S105 (the name of its row in server_secrets)


class SessionService:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        clock: Clock,
        keys: KeyService,
        metrics: Metrics,
        lookup: SessionLookup,
    ) -> None:
        self.database = database
        self.lookup = lookup
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.keys = keys
        self.codec = AccessTokenCodec(
            keys.ring, issuer=settings.issuer, ttl=settings.access_token_ttl
        )
        self._idle = timedelta(seconds=settings.session_idle_ttl)
        self._touch = timedelta(seconds=settings.session_touch_interval)
        self._grace = timedelta(seconds=settings.refresh_reuse_grace)
        self._rotation_secret: bytes | None = None
        # The refreshes of one turn of the event loop rotate together: in one statement on
        # PostgreSQL; on SQLite in one statement too, with those that arrive while a commit is
        # being flushed (they would only queue behind it). Two requests with the same token in
        # one batch: with a grace period the second gets the first's answer, the same
        # successor a retry gets; without one, it is reuse.
        self._rotations = TurnBatch(
            self._rotate_many, share=self._grace > timedelta(0), until=database.flushed
        )
        self._rotated = metrics.refreshes.labels("rotated")  # every refresh: looked up once
        self._touching: dict[str, asyncio.Task[None]] = {}  # by session id

    async def load_secrets(self) -> None:
        """Read the refresh-rotation secret every instance shares (at start-up)."""
        self._rotation_secret = await self.database.point_read(
            lambda conn: key_store.server_secret(conn, ROTATION_SECRET)
        )

    @property
    def rotation_secret(self) -> bytes:
        if self._rotation_secret is None:
            raise RuntimeError("SessionService.load_secrets() has not run (Keyturn.start does)")
        return self._rotation_secret

    # --- issuing ---------------------------------------------------------------------------

    async def open_session(
        self, conn: Connection, user: User, client: ClientInfo, *, now: datetime
    ) -> IssuedTokens:
        """Create a session inside the caller's transaction (the caller writes the audit event)."""
        session, refresh_token = self._new_session(user, client, now)
        await session_store.insert_session(conn, session, opaque_tokens.hash_token(refresh_token))
        return self._tokens(user, session, refresh_token, now)

    async def open_logged_session(
        self, user: User, client: ClientInfo, event: dict[str, Any]
    ) -> IssuedTokens:
        """Create a session, committed together with `event` (written for it) and nothing else:
        on PostgreSQL one statement, one round trip. A login's, which has nothing else to write."""
        now = event["occurred_at"]
        session, refresh_token = self._new_session(user, client, now)
        await session_store.open_logged_session(
            self.database, session, opaque_tokens.hash_token(refresh_token), event
        )
        return self._tokens(user, session, refresh_token, now)

    def _new_session(self, user: User, client: ClientInfo, now: datetime) -> tuple[Session, str]:
        expires_at = now + timedelta(seconds=self.settings.session_max_ttl)
        session = session_store.new_session(
            user_id=user.id,
            rotation_key=self.rotation_secret,  # for the previous release (see schema.sessions)
            now=now,
            expires_at=expires_at,
            ends_at=min(expires_at, now + self._idle),
            ip=client.ip,
            user_agent=client.user_agent,
        )
        return session, opaque_tokens.new_token()

    def _tokens(
        self, user: User, session: Session, refresh_token: str, now: datetime
    ) -> IssuedTokens:
        access_token, expires_in = self.codec.issue(
            user_id=user.id, session_id=session.id, now=now, session_expires_at=session.expires_at
        )
        return IssuedTokens(access_token, expires_in, refresh_token, session, user)

    # --- protected requests ----------------------------------------------------------------

    async def authenticate(self, access_token: str) -> Principal:
        """The principal behind a bearer token, checking its session in one round trip."""
        now = self.clock()
        claims = await self._verify(access_token, now)
        found = await self.lookup.find(claims.session_id)
        if found is None:
            raise Unauthorized("The session has ended.", token_presented=True)
        session, user = found
        if (
            session.user_id != claims.subject
            or not session.is_active(now)
            or user.is_disabled
            or user.is_deleted
        ):
            raise Unauthorized("The session has ended.", token_presented=True)
        if now - session.last_seen_at >= self._touch and session.id not in self._touching:
            touch = asyncio.get_running_loop().create_task(self._record_activity(session, now))
            self._touching[session.id] = touch
            touch.add_done_callback(lambda _: self._touching.pop(session.id, None))
        return Principal(user=user, session=session, claims=claims)

    async def _record_activity(self, session: Session, now: datetime) -> None:
        """Move `last_seen_at` and the idle end on, beside the request rather than in its way.

        Awaited, it made the request wait for a write: on SQLite for the write lock, which
        another process (a cleanup, a second instance) may hold for a whole batch and its
        fsync. Sessions touched together (a minute after a burst of logins) then held GET /me
        for 15 to 47 ms. Lost in a crash, it is written again by the session's next request."""
        try:
            async with self.database.write() as conn:
                await session_store.touch_session(
                    conn,
                    session.id,
                    now=now,
                    ends_at=min(session.expires_at, now + self._idle),
                    not_since=now - self._touch,
                )
        except Exception as error:  # the session's next request past the interval tries again
            log.warning("recording a session's activity failed: %s", type(error).__name__)

    async def recorded(self) -> None:
        """Return once the activity being recorded (`authenticate`) is written: at shutdown,
        before the database closes, and in tests."""
        while self._touching:
            await asyncio.gather(*self._touching.values(), return_exceptions=True)

    async def _verify(self, access_token: str, now: datetime) -> AccessClaims:
        try:
            return self.codec.verify(access_token, now=now)
        except Unauthorized:
            if not self._names_unknown_key(access_token):
                raise
        # Signed by a key another instance created since our last reload.
        await self.keys.reload_if_stale(unknown_kid=True)
        return self.codec.verify(access_token, now=now)

    def _names_unknown_key(self, access_token: str) -> bool:
        try:
            kid = jwt.get_unverified_header(access_token).get("kid")
        except jwt.PyJWTError:
            return False
        return isinstance(kid, str) and kid not in self.keys.ring.verification_keys

    # --- refresh ---------------------------------------------------------------------------

    async def refresh(self, refresh_token: str, client: ClientInfo) -> IssuedTokens:
        try:
            issued = await self._refresh(refresh_token, client)
        except RefreshTokenReused:
            self.metrics.refreshes.labels("reused").inc()
            self.metrics.reuse_detected.inc()
            self.metrics.revocations.labels(RevokeReason.REFRESH_TOKEN_REUSED).inc()
            raise
        except SessionExpired:
            self.metrics.refreshes.labels("expired").inc()
            raise
        except InvalidRefreshToken:
            self.metrics.refreshes.labels("invalid").inc()
            raise
        self._rotated.inc()
        return issued

    async def _refresh(self, refresh_token: str, client: ClientInfo) -> IssuedTokens:
        """Rotate: the old token stops working and a new one is returned.

        The immediate predecessor presented again within the grace period yields the same
        successor (a retry or a tab race); anything older is theft and ends the session.
        """
        if not opaque_tokens.looks_like_token(refresh_token):
            raise InvalidRefreshToken()
        token_hash = opaque_tokens.hash_token(refresh_token)
        # Known before the database is asked: the same token always has the same successor.
        successor = opaque_tokens.derive_successor(self.rotation_secret, refresh_token)
        now = self.clock()
        rotation = session_store.Rotation(
            token_hash=token_hash,
            successor_hash=opaque_tokens.hash_token(successor),
            now=now,
            idle_ends_at=now + self._idle,
            event=event(EventType.SESSION_REFRESHED, now=now, client=client),
        )
        rotated = await self._rotations.submit(token_hash, rotation)
        if rotated is None:
            async with self.database.write() as conn:
                retried = await self._turned_down(conn, refresh_token, token_hash, client, now)
            if retried is None:
                # Reuse: the revocation is committed (the block above ended) before we answer.
                raise RefreshTokenReused()
            session, user, successor = retried
        else:
            access = rotated.take_access()
            if access is not None:
                return IssuedTokens(access[0], access[1], successor, rotated.session, rotated.user)
            session, user = rotated.session, rotated.user
        # A retry's token (or one whose signature failed while flushing): signed now, after
        # the commit. No transaction waits on a signature.
        return self._tokens(user, session, successor, now)

    async def _rotate_many(
        self, rotations: dict[str, session_store.Rotation]
    ) -> dict[str, _RotationAnswer | Exception]:
        """The refreshes of one turn of the loop, rotated together; if that fails for a reason
        other than the database's state, each alone, so that only its own request fails.

        Their access tokens are signed while the commit is flushed. Under a burst of refreshes
        the loop had nothing else to do then (every other request was waiting on this commit
        or gathering for the next), and the signature is about a tenth of a refresh's CPU; a token
        is used only once the commit is durable, as before."""
        signed: dict[str, tuple[str, int]] = {}

        def sign(rotated: session_store.Rotated) -> None:
            for token_hash, (session, user) in rotated.items():
                # A failure here is met again after the commit, by that request alone.
                with contextlib.suppress(Exception):
                    signed[token_hash] = self.codec.issue(
                        user_id=user.id,
                        session_id=session.id,
                        now=rotations[token_hash].now,
                        session_expires_at=session.expires_at,
                    )

        try:
            rotated = await session_store.rotate_many(self.database, list(rotations.values()), sign)
            return {h: _RotationAnswer(s, u, signed.get(h)) for h, (s, u) in rotated.items()}
        except Unavailable:
            raise
        except Exception:
            if len(rotations) == 1:
                raise
        answers: dict[str, _RotationAnswer | Exception] = {}
        for token_hash, rotation in rotations.items():
            try:
                alone = await session_store.rotate_many(self.database, [rotation])
            except Exception as error:
                answers[token_hash] = error
            else:
                answers.update((h, _RotationAnswer(*found)) for h, found in alone.items())
        return answers

    async def _turned_down(
        self,
        conn: Connection,
        refresh_token: str,
        token_hash: str,
        client: ClientInfo,
        now: datetime,
    ) -> tuple[Session, User, str] | None:
        """Why `rotate_many` found no live token: raise the error to answer with, or return the
        session, user and successor of a retry, or None for reuse (the session has then been
        revoked in `conn`)."""
        found = await session_store.find_refresh_token(conn, token_hash)
        if found is None:
            raise InvalidRefreshToken()
        session = found.session
        if session.revoked_at is not None:
            raise InvalidRefreshToken()
        if session.ends_at <= now:
            raise SessionExpired()
        user = found.user
        if user.is_disabled or user.is_deleted:
            raise InvalidRefreshToken()
        rotated_at = found.token.rotated_at
        if rotated_at is None:
            # Live after all: rotate's conditions are these checks, so only a change committed
            # between the two reads gets here. The client tries again, as after a lost answer.
            raise InvalidRefreshToken()
        stored = found.successor
        if stored is not None and stored.rotated_at is None and now - rotated_at <= self._grace:
            # The same successor as the first answer: derived with the shared secret, or, when
            # the previous release rotated it during a rolling deploy, with the session's key.
            for key in (self.rotation_secret, session.rotation_key):
                successor = opaque_tokens.derive_successor(key, refresh_token)
                if opaque_tokens.hash_token(successor) == stored.token_hash:
                    return session, user, successor
            raise InvalidRefreshToken()  # from neither key: there is no answer to repeat
        await self._revoke_for_reuse(conn, session, client, now)
        return None

    async def _revoke_for_reuse(
        self, conn: Connection, session: Session, client: ClientInfo, now: datetime
    ) -> None:
        revoked = await session_store.revoke_sessions(
            conn,
            user_id=session.user_id,
            session_id=session.id,
            now=now,
            reason=RevokeReason.REFRESH_TOKEN_REUSED,
        )
        common: dict[str, Any] = {
            "now": now,
            "client": client,
            "user_id": session.user_id,
            "session_id": session.id,
        }
        events = [event(EventType.REFRESH_TOKEN_REUSED, **common)]
        if revoked:  # a concurrent detection may have revoked it a moment ago
            events.append(
                event(EventType.SESSION_REVOKED, reason=RevokeReason.REFRESH_TOKEN_REUSED, **common)
            )
        await audit_store.append_events(conn, events)

    # --- revocation ------------------------------------------------------------------------

    async def revoke_in(
        self,
        conn: Connection,
        *,
        user_id: str,
        reason: RevokeReason,
        client: ClientInfo,
        now: datetime,
        session_id: str | None = None,
        except_session_id: str | None = None,
        actor_session_id: str | None = None,
    ) -> list[Session]:
        """Revoke inside the caller's transaction, with one `session.revoked` event per session."""
        revoked = await session_store.revoke_sessions(
            conn,
            user_id=user_id,
            now=now,
            reason=reason,
            session_id=session_id,
            except_session_id=except_session_id,
        )
        if revoked:
            self.metrics.revocations.labels(str(reason)).inc(len(revoked))
        await audit_store.append_events(
            conn,
            [
                event(
                    EventType.SESSION_REVOKED,
                    now=now,
                    client=client,
                    user_id=user_id,
                    session_id=s.id,
                    reason=str(reason),
                    **({"by_session_id": actor_session_id} if actor_session_id else {}),
                )
                for s in revoked
            ],
        )
        return revoked

    async def logout(self, principal: Principal, scope: str, client: ClientInfo) -> int:
        """`local`: this session; `others`: every other one; `global`: all of them."""
        now = self.clock()
        session_id = principal.session.id
        async with self.database.write() as conn:
            revoked = await self.revoke_in(
                conn,
                user_id=principal.user.id,
                reason=RevokeReason.LOGOUT,
                client=client,
                now=now,
                session_id=session_id if scope == "local" else None,
                except_session_id=session_id if scope == "others" else None,
                actor_session_id=session_id,
            )
        return len(revoked)

    async def revoke_own_session(
        self, principal: Principal, session_id: str, client: ClientInfo
    ) -> None:
        """End one of the caller's sessions; another user's looks exactly like an unknown id."""
        now = self.clock()
        async with self.database.write() as conn:
            revoked = await self.revoke_in(
                conn,
                user_id=principal.user.id,
                session_id=session_id,
                reason=RevokeReason.USER,
                client=client,
                now=now,
                actor_session_id=principal.session.id,
            )
        if not revoked:
            raise NotFound("No such session.")

    async def revoke_token(self, token: str, client: ClientInfo) -> None:
        """RFC 7009: end the session behind a refresh or access token; unknown tokens are fine."""
        session_id: str | None = None
        user_id: str | None = None
        if not opaque_tokens.looks_like_token(token) and "." not in token:
            return
        if "." not in token:  # opaque refresh token; a JWT always has dots
            async with self.database.read() as conn:
                found = await session_store.find_session_by_token_hash(
                    conn, opaque_tokens.hash_token(token)
                )
            session_id = found.id if found else None
            user_id = found.user_id if found else None
        else:
            try:
                claims = self.codec.verify(token, now=self.clock())
            except Unauthorized:
                return
            session_id, user_id = claims.session_id, claims.subject
        if session_id is None or user_id is None:
            return
        async with self.database.write() as conn:
            await self.revoke_in(
                conn,
                user_id=user_id,
                session_id=session_id,
                reason=RevokeReason.LOGOUT,
                client=client,
                now=self.clock(),
            )

    async def list_active(self, user_id: str) -> list[Session]:
        async with self.database.read() as conn:
            return await session_store.list_active_sessions(conn, user_id, now=self.clock())

    async def mark_fresh(self, conn: Connection, session_id: str, now: datetime) -> None:
        await session_store.mark_authenticated(conn, session_id, now=now)

    # --- maintenance -----------------------------------------------------------------------

    async def purge_batch(self, batch_size: int) -> session_store.Purged:
        """One short transaction of cleanup."""
        return await session_store.purge_ended_batch(self.database, batch_size, now=self.clock())
