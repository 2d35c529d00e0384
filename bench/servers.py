"""The servers of a run, each started as its users would start it."""

from __future__ import annotations

from pathlib import Path

from bench.context import REPO, Context, clean_environ
from bench.databases import TempDatabase
from bench.process import Server, free_port, start_server

# uvicorn as `keyturn serve` runs it: one worker, uvloop and httptools, no access log of its own.
UVICORN_FLAGS = ("--no-access-log", "--log-level", "warning", "--no-server-header")


def hello(ctx: Context) -> Server:
    """The baseline: a plain FastAPI hello-world app (bench/apps/hello.py)."""
    port = free_port()
    argv = [ctx.python, "-m", "uvicorn", "bench.apps.hello:app", "--host", "127.0.0.1"]
    return start_server(
        "hello",
        [*argv, "--port", str(port), *UVICORN_FLAGS],
        env=clean_environ(),
        port=port,
        ready_path="/hello",
        log_dir=ctx.workdir,
        cwd=REPO,
    )


def keyturn_serve(ctx: Context, database: TempDatabase) -> Server:
    """The real thing: `.venv/bin/keyturn serve` (migrates, then one uvicorn worker)."""
    port = free_port()
    return start_server(
        f"keyturn-{database.backend}",
        [ctx.keyturn_bin, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=ctx.keyturn_env(database),
        port=port,
        ready_path="/healthz",
        log_dir=ctx.workdir,
        cwd=ctx.workdir,
    )


def mounted(ctx: Context, database: TempDatabase) -> Server:
    """A host app that mounts keyturn (bench/apps/mounted.py) on the same database."""
    port = free_port()
    argv = [ctx.python, "-m", "uvicorn", "--factory", "bench.apps.mounted:create"]
    return start_server(
        f"mounted-{database.backend}",
        [*argv, "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS],
        env=ctx.keyturn_env(database),
        port=port,
        ready_path="/healthz",
        log_dir=ctx.workdir,
        cwd=REPO,
    )


def fastapi_users(ctx: Context, python: Path, database: TempDatabase) -> Server:
    """bench/apps/fastapi_users_app.py in its own venv."""
    port = free_port()
    argv = [str(python), "-m", "uvicorn", "--app-dir", str(REPO / "bench" / "apps")]
    return start_server(
        f"fastapi-users-{database.backend}",
        [
            *argv,
            "fastapi_users_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *UVICORN_FLAGS,
        ],
        env={**clean_environ(), "FU_DATABASE_URL": database.url},
        port=port,
        ready_path="/hello",
        log_dir=ctx.workdir,
        cwd=ctx.workdir,
    )
