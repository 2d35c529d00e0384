"""What an administrator may do to other accounts."""

from __future__ import annotations

from keyturn.errors import NotFound
from keyturn.services.accounts import _still_there, canonical_email
from keyturn.services.audit import EventType, RevokeReason, event
from keyturn.services.context import ClientInfo, Clock
from keyturn.services.sessions import Principal, SessionService
from keyturn.storage import audit as audit_store
from keyturn.storage import users as user_store
from keyturn.storage.database import Connection, Database
from keyturn.storage.records import Session, User


class AdminService:
    def __init__(self, database: Database, clock: Clock, sessions: SessionService) -> None:
        self.database = database
        self.clock = clock
        self.sessions = sessions

    async def search_users(
        self, *, query: str | None, limit: int, after_id: str | None
    ) -> tuple[list[User], str | None]:
        async with self.database.read() as conn:
            found = await user_store.search_users(
                conn, query=query, limit=limit + 1, after_id=after_id
            )
        if len(found) > limit:
            return found[:limit], found[limit - 1].id
        return found, None

    async def _existing(self, user_id: str) -> User:
        async with self.database.read() as conn:
            user = await user_store.get_user(conn, user_id)
        if user is None or user.is_deleted:
            raise NotFound("No such user.")
        return user

    async def user_sessions(self, user_id: str) -> list[Session]:
        await self._existing(user_id)
        return await self.sessions.list_active(user_id)

    async def revoke_user_sessions(
        self, admin: Principal, user_id: str, client: ClientInfo
    ) -> None:
        await self._existing(user_id)
        async with self.database.write() as conn:
            await self.sessions.revoke_in(
                conn,
                user_id=user_id,
                reason=RevokeReason.ADMIN,
                client=client,
                now=self.clock(),
                actor_session_id=admin.session.id,
            )

    async def set_disabled(
        self, admin: Principal | None, user_id: str, disabled: bool, client: ClientInfo
    ) -> User:
        """Disabling ends every session at once; enabling lets the user log in again."""
        await self._existing(user_id)
        now = self.clock()
        async with self.database.write() as conn:
            user = await user_store.update_user(conn, user_id, is_disabled=disabled, updated_at=now)
            if disabled:
                await self.sessions.revoke_in(
                    conn,
                    user_id=user_id,
                    reason=RevokeReason.ACCOUNT_DISABLED,
                    client=client,
                    now=now,
                    actor_session_id=admin.session.id if admin else None,
                )
            await audit_store.append_events(
                conn,
                [
                    event(
                        EventType.USER_DISABLED if disabled else EventType.USER_ENABLED,
                        now=now,
                        client=client,
                        user_id=user_id,
                        session_id=admin.session.id if admin else None,
                        by_user_id=admin.user.id if admin else None,
                    )
                ],
            )
        return _still_there(user)

    async def set_disabled_by_email(self, email: str, disabled: bool) -> User:
        """The CLI's `users disable` and `users enable`, with no administrator acting: the way
        back in when every administrator's account has been disabled."""
        async with self.database.read() as conn:
            user = await _existing_by_email(conn, email)
        return await self.set_disabled(None, user.id, disabled, ClientInfo())

    async def promote(self, email: str) -> User:
        """Make an account an administrator (the CLI's `users promote`)."""
        now = self.clock()
        async with self.database.write() as conn:
            user = await _existing_by_email(conn, email)
            updated = await user_store.update_user(conn, user.id, is_admin=True, updated_at=now)
            await audit_store.append_events(
                conn,
                [
                    event(
                        EventType.USER_PROMOTED,
                        now=now,
                        client=ClientInfo(),
                        user_id=user.id,
                        via="cli",
                    )
                ],
            )
        return _still_there(updated)


async def _existing_by_email(conn: Connection, email: str) -> User:
    """The account the CLI names by address; deleted ones are as good as unknown."""
    user = await user_store.get_user_by_email(conn, canonical_email(email))
    if user is None or user.is_deleted:
        raise NotFound("No such user.")
    return user
