"""The `keyturn` command: serve, migrate, cleanup, users, keys, audit."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from keyturn.config import Settings, listen_host, listen_port, load_settings
from keyturn.errors import ConfigError, KeyturnError

T = TypeVar("T")

EXIT_CONFIG = 2


def _settings(host: str = "127.0.0.1", port: int = 8000) -> Settings:
    try:
        return load_settings(host=host, port=port)
    except ConfigError as error:
        _stop(error)


def _stop(error: ConfigError) -> NoReturn:
    """One line naming the setting, and exit status 2 (CONTRACT section 2)."""
    print(f"keyturn: invalid configuration: {error.detail}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG) from None


def _with_database(settings: Settings, job: Callable[..., Awaitable[T]]) -> T:
    """Run one job against the migrated database, with nothing of the app: no web stack, no
    services, no keys."""
    from keyturn.storage.database import Database
    from keyturn.storage.migrate import upgrade

    async def main() -> T:
        database = Database(settings.database_url)
        try:
            await upgrade(database)
            return await job(database)
        finally:
            await database.dispose()

    return asyncio.run(main())


def _with_keyturn(settings: Settings, job: Callable[..., Awaitable[T]]) -> T:
    """Run one job against the database (migrated, keys loaded, no background tasks)."""
    from keyturn.facade import Keyturn

    async def main() -> T:
        keyturn = Keyturn(settings)
        await keyturn.start(background=False)
        try:
            return await job(keyturn)
        finally:
            await keyturn.stop()

    return asyncio.run(main())


def build_server_app() -> object:
    """uvicorn's app factory: every worker builds its own app from the environment."""
    from keyturn.facade import Keyturn
    from keyturn.logs import configure_logging
    from keyturn.web.app import create_app

    configure_logging()  # again: a worker of `--workers N` is a new interpreter
    host = os.environ.get("KEYTURN_BIND_HOST", "127.0.0.1")
    port = int(os.environ.get("KEYTURN_BIND_PORT", "8000"))
    # Migrations already ran in the parent process.
    app = create_app(Keyturn(_settings(host, port), run_migrations=False))
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with started(app) as state:
            # What start-up built (the app, its routes and models, compiled statements, keys)
            # lives as long as the process. Frozen, the garbage collector stops walking it on
            # every full collection: ~135k objects, about a tenth of a refresh's CPU. Only
            # here, in the server's own process: a host app decides that for itself.
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan
    return app


def prepare_to_serve() -> int:
    """`keyturn serve`'s first step, in a child process: migrate and make sure a signing key
    exists; 0 when the server may start."""
    from keyturn.facade import Keyturn
    from keyturn.logs import configure_logging

    configure_logging()
    host = os.environ.get("KEYTURN_BIND_HOST", "127.0.0.1")
    port = int(os.environ.get("KEYTURN_BIND_PORT", "8000"))

    async def prepare() -> None:
        keyturn = Keyturn(_settings(host, port))
        await keyturn.start(background=False)
        await keyturn.stop()

    try:
        asyncio.run(prepare())
    except KeyturnError as error:
        print(f"keyturn: cannot start: {error.detail}", file=sys.stderr)
        return 1
    except (OSError, SQLAlchemyError) as error:
        print(f"keyturn: cannot start: database error ({type(error).__name__})", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from keyturn.logs import configure_logging

    try:
        host, port = listen_host(os.environ, args.host), listen_port(os.environ, args.port)
    except ConfigError as error:
        _stop(error)
    _settings(host, port)  # a bad setting stops here, with its one line and status 2
    configure_logging()
    os.environ["KEYTURN_BIND_HOST"] = host
    os.environ["KEYTURN_BIND_PORT"] = str(port)
    # Migrations and the first signing key, in a process of their own: Alembic then never
    # enters the serving process's memory (11 MiB of it, with one worker the same process).
    prepared = subprocess.run(
        [sys.executable, "-c", "import keyturn.cli as c; raise SystemExit(c.prepare_to_serve())"],
        check=False,
    )
    if prepared.returncode != 0:
        return prepared.returncode
    uvicorn.run(
        "keyturn.cli:build_server_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        access_log=False,
        log_config=None,
        proxy_headers=False,  # X-Forwarded-For is judged by KEYTURN_TRUSTED_PROXIES, not uvicorn
        server_header=False,
        timeout_graceful_shutdown=20,
    )
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    async def nothing_more(_database: object) -> None:
        return None

    _with_database(_settings(), nothing_more)
    print("database schema is up to date")
    return 0


def cmd_cleanup(_args: argparse.Namespace) -> int:
    """Only the storage layer, not the app: cron runs this beside a busy server, and importing
    the web stack and the services cost most of a second of CPU more (1.6 against 0.9 s on a
    slow 2-core machine), all of it at the cleanup's start."""
    from keyturn.storage.database import Database
    from keyturn.storage.sessions import Purged, purge_ended_batch
    from keyturn.tasks import purge_ended_sessions

    interactive = sys.stderr.isatty()

    def progress(sessions: int, tokens: int) -> None:
        if sessions and (interactive or sessions % 100_000 == 0):
            end = "\r" if interactive else "\n"
            print(f"  … {sessions} sessions, {tokens} refresh tokens", end=end, file=sys.stderr)

    async def job(database: Database) -> tuple[int, int] | None:
        async def batch(size: int) -> Purged:
            return await purge_ended_batch(database, size, now=datetime.now(UTC))

        return await purge_ended_sessions(database, batch, on_progress=progress)

    result = _with_database(_settings(), job)
    if result is None:
        print("another instance is cleaning up right now; nothing done")
        return 0
    print(f"removed {result[0]} sessions and {result[1]} refresh tokens")
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users_create(args: argparse.Namespace) -> int:
    from keyturn.facade import Keyturn

    password = _read_password()

    async def job(keyturn: Keyturn) -> str:
        user = await keyturn.accounts.create_user(
            args.email, password, name=args.name, is_admin=args.admin
        )
        return user.id

    user_id = _with_keyturn(_settings(), job)
    print(f"created user {user_id}{' (admin)' if args.admin else ''}")
    return 0


def cmd_users_promote(args: argparse.Namespace) -> int:
    from keyturn.facade import Keyturn

    async def job(keyturn: Keyturn) -> str:
        return (await keyturn.admin.promote(args.email)).id

    print(f"user {_with_keyturn(_settings(), job)} is now an administrator")
    return 0


def cmd_users_set_disabled(args: argparse.Namespace) -> int:
    from keyturn.facade import Keyturn

    disabled = args.users_command == "disable"

    async def job(keyturn: Keyturn) -> str:
        return (await keyturn.admin.set_disabled_by_email(args.email, disabled)).id

    state = "disabled, every session of it ended" if disabled else "enabled"
    print(f"user {_with_keyturn(_settings(), job)} is {state}")
    return 0


def cmd_keys_rotate(_args: argparse.Namespace) -> int:
    from keyturn.facade import Keyturn

    async def job(keyturn: Keyturn) -> str:
        return await keyturn.keys.rotate()

    print(f"new signing key {_with_keyturn(_settings(), job)} is active")
    return 0


def cmd_audit_verify(_args: argparse.Namespace) -> int:
    from keyturn.facade import Keyturn
    from keyturn.services.audit import ChainReport

    async def job(keyturn: Keyturn) -> ChainReport:
        return await keyturn.audit.verify()

    report = _with_keyturn(_settings(), job)
    if report.broken is None:
        print(f"audit log intact: {report.events_checked} events verified")
        # Keep this line somewhere the database's owner cannot edit: anyone able to rewrite
        # the whole table could recompute every hash, but not this head.
        print(f"head: seq {report.head_seq} sha256 {report.head_hash}")
        return 0
    print(report.broken)
    return 1


def cmd_audit_prune(args: argparse.Namespace) -> int:
    from keyturn.facade import Keyturn

    try:
        before = datetime.fromisoformat(args.before)
    except ValueError:
        print(f"keyturn: --before must be an ISO 8601 date, got {args.before!r}", file=sys.stderr)
        return EXIT_CONFIG
    if before.tzinfo is None:
        before = before.replace(tzinfo=UTC)

    async def job(keyturn: Keyturn) -> int:
        return await keyturn.audit.prune(before)

    print(f"removed {_with_keyturn(_settings(), job)} audit events")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="keyturn", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(run=cmd_serve)

    commands.add_parser("migrate", help="bring the schema up to date").set_defaults(run=cmd_migrate)
    commands.add_parser("cleanup", help="delete ended sessions now").set_defaults(run=cmd_cleanup)

    users = commands.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True
    )
    create = users.add_parser("create", help="create an account; password on standard input")
    create.add_argument("email")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--name")
    create.set_defaults(run=cmd_users_create)
    promote = users.add_parser("promote", help="make an account an administrator")
    promote.add_argument("email")
    promote.set_defaults(run=cmd_users_promote)
    for command, says in (
        ("disable", "end every session of an account and refuse its logins"),
        ("enable", "let a disabled account log in again"),
    ):
        toggle = users.add_parser(command, help=says)
        toggle.add_argument("email")
        toggle.set_defaults(run=cmd_users_set_disabled)

    keys = commands.add_parser("keys", help="signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("rotate", help="activate a new signing key").set_defaults(run=cmd_keys_rotate)

    audit = commands.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    audit.add_parser("verify", help="check the hash chain").set_defaults(run=cmd_audit_verify)
    prune = audit.add_parser("prune", help="remove events older than a date")
    prune.add_argument("--before", required=True)
    prune.set_defaults(run=cmd_audit_prune)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyturnError as error:
        print(f"keyturn: {error.detail}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
