"""Signing keys over time: create the first, rotate, and keep every process's ring current."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from keyturn.security import signing_keys as crypto
from keyturn.security.signing_keys import KeyRing
from keyturn.services.audit import EventType, event
from keyturn.services.context import ClientInfo, Clock
from keyturn.storage import audit as audit_store
from keyturn.storage import keys as key_store
from keyturn.storage.database import Connection, Database
from keyturn.storage.records import SigningKey

_KEY_LOCK = 0x6B74_6B6579  # PostgreSQL advisory lock: one instance creates the first key


class KeyService:
    """Owns the process's `KeyRing`; other instances learn of new keys by reloading."""

    def __init__(
        self, database: Database, clock: Clock, *, access_token_ttl: int, refresh_interval: int
    ) -> None:
        self.database = database
        self.clock = clock
        self.ring = KeyRing()
        self.access_token_ttl = access_token_ttl
        self.refresh_interval = refresh_interval
        self._loaded_at = 0.0
        self._reload_lock = asyncio.Lock()

    async def ensure_signing_key(self) -> None:
        """Create a key on the very first start; every later start finds one."""
        async with self.database.write() as conn:
            if self.database.dialect == "postgresql":
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_KEY_LOCK})")
            keys = await key_store.published_keys(conn, now=self.clock())
            if not any(k.retired_at is None for k in keys):
                await self._insert_new(conn)
        await self.reload()

    async def rotate(self) -> str:
        """A new key signs from now on; the old ones stay published until their tokens expire."""
        now = self.clock()
        async with self.database.write() as conn:
            if self.database.dialect == "postgresql":
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_KEY_LOCK})")
            kid = await self._insert_new(conn)
            # A token signed a moment before retirement lives access_token_ttl more; allow skew.
            until = now + timedelta(seconds=self.access_token_ttl + 60)
            await key_store.retire_active_keys(conn, except_kid=kid, now=now, publish_until=until)
            rotated = event(EventType.KEY_ROTATED, now=now, client=ClientInfo(), kid=kid)
            await audit_store.append_events(conn, [rotated])
        await self.reload()
        return kid

    async def _insert_new(self, conn: Connection) -> str:
        generated = crypto.generate_key()
        await key_store.insert_key(
            conn,
            kid=generated.kid,
            algorithm=crypto.ALGORITHM,
            private_pem=generated.private_pem,
            public_jwk=generated.public_jwk,
            now=self.clock(),
        )
        return generated.kid

    async def reload(self) -> None:
        async with self.database.read() as conn:
            keys = await key_store.published_keys(conn, now=self.clock())
        self._apply(keys)
        self._loaded_at = time.monotonic()

    def _apply(self, keys: list[SigningKey]) -> None:
        active = [k for k in keys if k.retired_at is None]
        ring = self.ring
        if active:
            newest = active[0]
            if ring.signing_kid != newest.kid:
                ring.signing_key = crypto.SodiumSigner(crypto.load_private(newest.private_pem))
                ring.signing_kid = newest.kid
        verification = {}
        for key in keys:
            existing = ring.verification_keys.get(key.kid)
            verification[key.kid] = existing or crypto.load_private(key.private_pem).public_key()
        ring.verification_keys = verification
        ring.published = [k.public_jwk for k in keys]

    async def reload_if_stale(self, *, unknown_kid: bool = False) -> None:
        """Reload when the ring is older than the refresh interval, or at once (at most 5 times a
        second) when a token names a key this process has not seen: another instance rotated."""
        # 0.2 s: a flood of forged kids costs at most five small reads a second.
        limit = 0.2 if unknown_kid else float(self.refresh_interval)
        if time.monotonic() - self._loaded_at < limit:
            return
        async with self._reload_lock:
            if time.monotonic() - self._loaded_at >= limit:
                await self.reload()
