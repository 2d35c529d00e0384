"""The servers of a run, each started as its users would start it."""

from __future__ import annotations

import time
from pathlib import Path

from bench.context import REPO, Context, clean_environ
from bench.databases import TempDatabase
from bench.process import Server, free_port, start_server, worker_pids
from bench.rows import settle

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


def keyturn_serve(ctx: Context, database: TempDatabase, workers: int = 1) -> Server:
    """The real thing: `.venv/bin/keyturn serve` (migrates, then one uvicorn worker, or
    `--workers N`: a supervising parent and N worker processes on one listening socket)."""
    port = free_port()
    argv = [ctx.keyturn_bin, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    server = start_server(
        f"keyturn-{database.backend}" + (f"-{workers}-workers" if workers > 1 else ""),
        argv,
        env=ctx.keyturn_env(database),
        port=port,
        ready_path="/healthz",
        log_dir=ctx.workdir,
        cwd=ctx.workdir,
    )
    if workers > 1:
        _wait_for_workers(server, workers)
    return server


def _wait_for_workers(server: Server, workers: int, timeout: float = 60.0) -> None:
    """/healthz answers as soon as one worker serves; wait until all N exist and have gone
    idle (done importing and starting up), so that none is still starting when wrk connects."""
    deadline = time.monotonic() + timeout
    while len(worker_pids(server.pid)) < workers:
        if time.monotonic() > deadline or server.process.poll() is not None:
            found = len(worker_pids(server.pid))
            server.stop()
            raise RuntimeError(
                f"{server.name}: {found} of {workers} workers started:\n{server.log_tail()}"
            )
        time.sleep(0.1)
    settle(server)


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
