"""`Keyturn`: settings in; services, routers and dependencies out. The server uses it too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.routing import BaseRoute

from keyturn.config import Settings, load_settings
from keyturn.metrics import Metrics
from keyturn.security.passwords import PasswordHasher
from keyturn.services.accounts import AccountService
from keyturn.services.admin import AdminService
from keyturn.services.audit import AuditService
from keyturn.services.context import Clock, system_clock
from keyturn.services.keys import KeyService
from keyturn.services.sessions import SessionService
from keyturn.services.throttle import Throttle
from keyturn.storage import migrate
from keyturn.storage.database import Database
from keyturn.storage.session_lookup import SessionLookup
from keyturn.tasks import purge_ended_sessions, run_every
from keyturn.web.dependencies import Dependencies, build_dependencies
from keyturn.web.middleware import KeyturnMiddleware
from keyturn.web.problems import install_handlers

log = logging.getLogger("keyturn")


class Keyturn:
    """Everything keyturn is, for one database.

    A host app mounts `keyturn.router`, protects its own routes with `keyturn.current_user`
    (or `current_session`, `fresh_session`, `admin`), and runs `keyturn.lifespan`.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock = system_clock,
        prefix: str = "",
        run_migrations: bool = True,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.clock = clock
        self.prefix = prefix
        self.run_migrations = run_migrations
        self.database = Database(
            self.settings.database_url, pool_size=self.settings.database_pool_size
        )
        self.metrics = Metrics()
        self.hasher = PasswordHasher(
            self.settings.argon2, concurrency=self.settings.hash_concurrency
        )
        self.throttle = Throttle(
            rate_limit=self.settings.rate_limit,
            login_failure_limit=self.settings.login_failure_limit,
            login_failure_window=self.settings.login_failure_window,
            redis_url=self.settings.redis_url,
        )
        self.keys = KeyService(
            self.database,
            clock,
            access_token_ttl=self.settings.access_token_ttl,
            refresh_interval=self.settings.key_refresh_interval,
        )
        self.metrics.watch_hash_queue(lambda: self.hasher.queue_depth)
        self.lookup = SessionLookup(self.database)
        self.sessions = SessionService(
            self.database, self.settings, clock, self.keys, self.metrics, self.lookup
        )
        self.accounts = AccountService(
            self.database, self.settings, clock, self.hasher, self.sessions, self.throttle
        )
        self.admin = AdminService(self.database, clock, self.sessions)
        self.audit = AuditService(self.database, clock)
        self.dependencies: Dependencies = build_dependencies(self, token_url=f"{prefix}/auth/token")
        self._tasks: list[asyncio.Task[None]] = []
        self._router: APIRouter | None = None

    # --- what a host app uses --------------------------------------------------------------

    @property
    def current_user(self) -> Any:
        return self.dependencies.current_user

    @property
    def current_session(self) -> Any:
        return self.dependencies.current_session

    @property
    def principal(self) -> Any:
        return self.dependencies.principal

    @property
    def fresh_session(self) -> Any:
        """Demands the password was entered in this session within `KEYTURN_FRESH_AGE`."""
        return self.dependencies.fresh_principal

    @property
    def admin_required(self) -> Any:
        return self.dependencies.admin_principal

    @property
    def router(self) -> APIRouter:
        """Every keyturn endpoint, ready for `app.include_router(keyturn.router)`."""
        if self._router is None:
            from keyturn.web.routers.admin import build_admin_router
            from keyturn.web.routers.auth import build_auth_router
            from keyturn.web.routers.me import build_me_router
            from keyturn.web.routers.meta import build_meta_router

            router = APIRouter()
            for build in (
                build_me_router,
                build_auth_router,
                build_admin_router,
                build_meta_router,
            ):
                # Flat, not nested: each level of included routers is walked on every request
                # (a sixth of GET /me's cost). Routes carry their full paths (with `prefix`),
                # tags and documented responses from their own routers.
                router.routes.extend(build(self).routes)
            # The hottest routes first: routes are tried in order, and each one passed over
            # costs its match (a refresh passed eleven, about 5 % of it). No other route's
            # path overlaps theirs, so the order changes nothing else.
            hot = [(f"{self.prefix}/me", "GET"), (f"{self.prefix}/auth/refresh", "POST")]

            def heat(route: BaseRoute) -> int:
                methods = getattr(route, "methods", None) or ()
                path = getattr(route, "path", None)
                for rank, (hot_path, method) in enumerate(hot):
                    if path == hot_path and method in methods:
                        return rank
                return len(hot)

            router.routes.sort(key=heat)  # stable: the others keep their order
            self._router = router
        return self._router

    def install(self, app: FastAPI) -> None:
        """Problem-details error handlers and keyturn's middleware on a host app."""
        install_handlers(app)
        app.add_middleware(
            KeyturnMiddleware, trusted_proxies=self.settings.trusted_proxies, metrics=self.metrics
        )

    @asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        if self.run_migrations:
            await migrate.upgrade(self.database)
        await self.keys.ensure_signing_key()
        await self.sessions.load_secrets()
        if self.database.is_sqlite:
            # From here on SQLite chains each event as it is written (storage/audit.py): the
            # events an earlier release left waiting go first, in the order they happened.
            await self.audit.seal()
        if background:
            self._tasks.append(asyncio.create_task(self.audit.keep_sealing()))
            self._tasks.append(
                asyncio.create_task(
                    run_every(self.settings.key_refresh_interval, self.keys.reload, "key reload")
                )
            )
            if self.settings.cleanup_interval > 0:
                self._tasks.append(
                    asyncio.create_task(
                        run_every(self.settings.cleanup_interval, self.cleanup, "session cleanup")
                    )
                )

    async def cleanup(self) -> tuple[int, int] | None:
        """Purge ended sessions now; None if another instance is doing it."""
        # A short pause between batches leaves the database to requests.
        result = await purge_ended_sessions(self.database, self.sessions.purge_batch, pause=0.01)
        head = await self.audit.head()
        # An external anchor for the audit chain: log pipelines keep what the database may lose.
        log.info(
            "audit chain head", extra={"audit_seq": head.last_seq, "audit_hash": head.last_hash}
        )
        if result is not None:
            self.metrics.cleanup_runs.inc()
            self.metrics.cleanup_removed.labels("sessions").inc(result[0])
            self.metrics.cleanup_removed.labels("refresh_tokens").inc(result[1])
            if result[0]:
                log.info("cleanup removed %d sessions and %d refresh tokens", *result)
        return result

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.sessions.recorded()
        self.hasher.close()
        try:  # what this instance wrote joins the chain now, not when another one seals it
            await self.audit.seal()
        except Exception as error:  # a database that is down must not stop the shutdown
            log.warning("audit events left unsealed at shutdown: %s", type(error).__name__)
        await self.database.dispose()
