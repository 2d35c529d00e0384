"""The real `keyturn serve` process, started and stopped by tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

KEYTURN = str(Path(sys.executable).with_name("keyturn"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env.update({"KEYTURN_DATABASE_URL": database_url, "KEYTURN_RATE_LIMIT": "off"})
    env.update(extra)
    return env


@contextmanager
def running_server(
    env: Mapping[str, str],
    *,
    port: int | None = None,
    cwd: Path | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[str]:
    """Start `keyturn serve`, wait until /healthz answers, yield its base URL, then stop it."""
    port = port or free_port()
    log: IO[bytes] | None = (Path(cwd) / f"serve-{port}.log").open("wb") if cwd else None
    process = subprocess.Popen(
        [KEYTURN, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=dict(env),
        cwd=cwd,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, base, name="keyturn serve", seconds=30)
        yield base
    finally:
        stop(process, seconds=15)
        if log is not None:
            log.close()


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    base: str,
    *,
    name: str,
    seconds: float,
    on_exit: Callable[[], str] = lambda: "",
) -> None:
    """Poll `base`/healthz until it answers 200; fail early if the process has exited."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}{on_exit()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer /healthz in {seconds:g} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], *, seconds: float) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it takes longer than `seconds`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
