"""Bench users: register them over HTTP, keep their tokens, write the files wrk's Lua reads."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.client import call, expect

APPS = Path(__file__).resolve().parent / "apps"
PASSWORD = "Bench-Secret-7419-kt"  # strong enough for keyturn's policy, not in its common list


@dataclass(frozen=True, slots=True)
class BenchUser:
    email: str
    password: str
    access_token: str
    refresh_token: str | None = None


def emails(run_id: str, prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index}-{run_id}@bench.example.com" for index in range(count)]


def parallel(function: Callable[[str], BenchUser], items: Iterable[str]) -> list[BenchUser]:
    """Set-up requests a few at a time (the hashing server is the bottleneck anyway)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(function, items))


def keyturn_user(base_url: str) -> Callable[[str], BenchUser]:
    """Register on keyturn: the token response carries the access and the refresh token."""

    def register(email: str) -> BenchUser:
        status, body = call(
            base_url, "POST", "/auth/register", json_body={"email": email, "password": PASSWORD}
        )
        body = expect(status, body, 201, f"register {email}")
        return BenchUser(email, PASSWORD, body["access_token"], body["refresh_token"])

    return register


def fresh_refresh_tokens(base_url: str, credentials: Path, out: Path) -> Path:
    """Each bench user logs in once more: a new session each, so a second refresh row starts
    on chains of its own (the first row's last tokens were lost in flight when wrk stopped)."""

    def log_in(line: str) -> str:
        email, password = line.split("\t")
        status, body = call(
            base_url, "POST", "/auth/login", json_body={"email": email, "password": password}
        )
        token: str = expect(status, body, 200, f"login {email}")["refresh_token"]
        return token

    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(log_in, credentials.read_text().splitlines()))
    out.write_text("".join(f"{token}\n" for token in tokens))
    return out


def seed_fastapi_users(python: Path, database_url: str, addresses: list[str]) -> list[BenchUser]:
    """Users and tokens straight into fastapi-users' tables (bench/apps/fastapi_users_seed.py)."""
    done = subprocess.run(
        [str(python), str(APPS / "fastapi_users_seed.py"), PASSWORD],
        input=json.dumps(addresses),
        env={**os.environ, "FU_DATABASE_URL": database_url, "PYTHONPATH": str(APPS)},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding fastapi-users failed:\n{done.stderr[-2000:]}")
    tokens = json.loads(done.stdout)
    return [
        BenchUser(email, PASSWORD, token) for email, token in zip(addresses, tokens, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class LuaFiles:
    """The per-user inputs of the Lua scripts, one line each."""

    access_tokens: Path
    credentials: Path
    refresh_tokens: Path


def write_lua_files(directory: Path, users: list[BenchUser]) -> LuaFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = LuaFiles(
        directory / "access_tokens.txt",
        directory / "credentials.tsv",
        directory / "refresh_tokens.txt",
    )
    files.access_tokens.write_text("".join(f"{u.access_token}\n" for u in users))
    files.credentials.write_text("".join(f"{u.email}\t{u.password}\n" for u in users))
    files.refresh_tokens.write_text(
        "".join(f"{u.refresh_token}\n" for u in users if u.refresh_token)
    )
    return files
