"""The real `keyturn serve` process and CLI, as a new user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.actions import PASSWORD
from tests.server_process import KEYTURN, free_port, running_server, server_env

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYTURN, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_readme_walkthrough_against_the_real_server(database_url: str, tmp_path: Path) -> None:
    with (
        running_server(server_env(database_url), cwd=tmp_path) as base,
        httpx.Client(base_url=base) as http,
    ):
        registered = http.post(
            "/auth/register",
            json={"email": "ada@example.com", "password": PASSWORD, "name": "Ada"},
        )
        assert registered.status_code == 201
        assert registered.headers["x-request-id"]
        tokens = http.post(
            "/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
        ).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = http.get("/me?probe=1", headers=auth)
        assert me.json()["email"] == "ada@example.com"
        refreshed = http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200
        auth = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert http.post("/auth/logout", headers=auth).status_code == 204
        after = http.get("/me", headers=auth)
        assert after.status_code == 401
        assert after.json()["code"] == "unauthorized"
        assert http.get("/.well-known/jwks.json").json()["keys"]
        assert http.get("/readyz").status_code == 200
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert PASSWORD not in log
    assert tokens["refresh_token"] not in log
    assert tokens["access_token"] not in log
    assert "Traceback" not in log
    # One JSON object per line; the request's line carries its id, never the query string.
    entries = [json.loads(line) for line in log.splitlines()]
    (access,) = [e for e in entries if e.get("request_id") == me.headers["x-request-id"]]
    assert access["logger"] == "keyturn.access"
    assert access["level"] == "info"
    assert access["message"] == "GET /me 200"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/me", 200)
    assert access["duration_ms"] >= 0
    assert access["client_ip"] == "127.0.0.1"
    assert "probe" not in json.dumps(entries)


def test_every_worker_of_serve_writes_access_lines(tmp_path: Path) -> None:
    env = server_env(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    with running_server(env, cwd=tmp_path, args=("--workers", "2")) as base:
        ids = {httpx.get(f"{base}/healthz").headers["x-request-id"] for _ in range(8)}
    log = next(tmp_path.glob("serve-*.log")).read_text()
    logged = {
        entry.get("request_id")
        for entry in map(json.loads, log.splitlines())
        if entry["logger"] == "keyturn.access"
    }
    # Each worker is a new interpreter: without its own logging set-up its lines were lost.
    assert ids <= logged


@pytest.mark.parametrize(
    ("setting", "flags", "named"),
    [
        ({"KEYTURN_ACCESS_TOKEN_TTL": "-5"}, ("--port", "free"), "KEYTURN_ACCESS_TOKEN_TTL"),
        ({"PORT": "abc"}, (), "PORT"),
        ({}, ("--port", "99999"), "--port"),
        ({"HOST": "999.1.1.1"}, ("--port", "free"), "HOST"),
    ],
)
def test_serve_refuses_an_invalid_setting_with_one_line_and_exit_2(
    tmp_path: Path, setting: dict[str, str], flags: tuple[str, ...], named: str
) -> None:
    env = server_env(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", **setting)
    result = _cli("serve", *(str(free_port()) if f == "free" else f for f in flags), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_users_create_reads_the_password_from_stdin_and_migrate_is_idempotent(
    database_url: str,
) -> None:
    env = server_env(database_url)
    assert _cli("migrate", env=env).returncode == 0
    assert _cli("migrate", env=env).returncode == 0
    created = _cli("users", "create", "root@example.com", "--admin", "--name", "Root", env=env,
                   stdin=PASSWORD + "\n")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "admin" in created.stdout
    duplicate = _cli("users", "create", "root@example.com", env=env, stdin=PASSWORD + "\n")
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    weak = _cli("users", "create", "weak@example.com", env=env, stdin="password\n")
    assert weak.returncode == 1
    assert "common" in weak.stderr


def test_make_run_serves_on_port_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **server_env(f"sqlite+aiosqlite:///{tmp_path / 'run.db'}"),
        "PORT": str(port),
        "PYTHON": sys.executable,
    }
    output = (tmp_path / "make-run.log").open("wb")
    process = subprocess.Popen(
        ["make", "-s", "run"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "make-run.log").read_text()
            assert time.monotonic() < deadline, "make run did not serve within 60 s"
            time.sleep(0.2)
        assert (tmp_path / "run.db").exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        output.close()


def test_graceful_shutdown_finishes_in_flight_requests(database_url: str, tmp_path: Path) -> None:
    """SIGTERM while logins (argon2 at production cost) queue up: every one still answers 200."""
    env = server_env(database_url)
    finished: list[tuple[int, float]] = []
    with running_server(env, cwd=tmp_path) as base:
        httpx.post(f"{base}/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
        port = base.rsplit(":", 1)[1]
        pid = int(
            subprocess.run(
                ["pgrep", "-f", f"keyturn serve --host 127.0.0.1 --port {port}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()[0]
        )  # fmt: skip

        http = httpx.Client(base_url=base, timeout=30, limits=httpx.Limits(max_connections=16))

        def login() -> None:
            body = {"email": "ada@example.com", "password": PASSWORD}
            finished.append((http.post("/auth/login", json=body).status_code, time.monotonic()))

        workers = [threading.Thread(target=login) for _ in range(16)]
        for worker in workers:
            worker.start()
        # The first answer means the others are queued on the hasher: now is "in flight".
        deadline = time.monotonic() + 30
        while not finished and time.monotonic() < deadline:
            time.sleep(0.001)
        terminated_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        for worker in workers:
            worker.join(timeout=30)
        http.close()
    assert [status for status, _ in finished] == [200] * 16
    assert any(at > terminated_at for _, at in finished), "nothing was in flight at SIGTERM"


_FREEZE_PROBE = """
import asyncio, gc, sys
from keyturn.cli import build_server_app, _settings
from keyturn.facade import Keyturn
from keyturn.web.app import create_app

async def frozen_while_serving(app):
    async with app.router.lifespan_context(app):
        return gc.get_freeze_count()

# A host app's objects are its own business; the server's are frozen once it has started.
host = asyncio.run(frozen_while_serving(create_app(Keyturn(_settings()))))
server = asyncio.run(frozen_while_serving(build_server_app()))
print(host, server)
"""


def _probe(tmp_path: Path, code: str) -> str:
    """What `code` prints, run by a new interpreter on a migrated database of its own."""
    env = server_env(f"sqlite+aiosqlite:///{tmp_path / 'keyturn.db'}")
    assert _cli("migrate", env=env).returncode == 0
    probe = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return probe.stdout


def test_the_server_freezes_what_start_up_built_and_a_host_app_does_not(tmp_path: Path) -> None:
    host, server = map(int, _probe(tmp_path, _FREEZE_PROBE).split())
    assert host == 0
    assert server > 10_000  # the app, its models and statements: ~135k objects


_ALEMBIC_PROBE = """
import asyncio, os, sys
from keyturn.cli import build_server_app
from keyturn.storage.database import Database
from keyturn.storage.migrate import is_current

async def serve_and_check(app):
    async with app.router.lifespan_context(app):
        database = Database(os.environ["KEYTURN_DATABASE_URL"])
        assert await is_current(database)  # what /readyz asks
        await database.dispose()

asyncio.run(serve_and_check(build_server_app()))
print("alembic" in sys.modules)
"""


def test_the_serving_process_never_loads_alembic(tmp_path: Path) -> None:
    """`keyturn serve` migrates in a child process: Alembic is 11 MiB of the 150 the server
    may use, and serving, readiness included, needs none of it."""
    assert _probe(tmp_path, _ALEMBIC_PROBE).strip() == "False"
