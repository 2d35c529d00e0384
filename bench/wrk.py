"""wrk: install it when missing, run it with one of our Lua scripts, read its JSON summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"


def ensure_wrk() -> str | None:
    """wrk's path, installing the Debian package if needed; None (and why) when impossible."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        print("bench: wrk is missing and cannot be installed here (needs root and apt-get);")
        print("       install it (Debian/Ubuntu: apt-get install wrk) and run again.")
        return None
    print("bench: installing wrk (apt-get install wrk) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"bench: `{' '.join(argv)}` failed:\n{done.stderr.strip()[-2000:]}")
            return None
    return shutil.which("wrk")


@dataclass(frozen=True, slots=True)
class Load:
    """One wrk invocation: which script against which server, how hard and how long."""

    base_url: str
    script: str
    path: str = "/"
    args: tuple[str, ...] = ()
    connections: int = 32
    threads: int = 2
    duration: float = 5.0
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class Run:
    """A wrk process in the background; `interrupt()` ends it early (wrk still reports)."""

    def __init__(self, wrk: str, load: Load, *, duration: float | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-wrk-")
        self._report = Path(self._dir.name) / "report.json"
        seconds = max(1, round(duration if duration is not None else load.duration))
        argv = [
            wrk,
            f"-t{min(load.threads, load.connections)}",
            f"-c{load.connections}",
            f"-d{seconds}s",
            f"--timeout={round(load.timeout)}s",
            "-s",
            str(LUA_DIR / load.script),
            load.base_url.rstrip("/") + load.path,
        ]
        if load.args:
            argv += ["--", *load.args]
        self.argv = argv
        self._process = subprocess.Popen(
            argv,
            env={**os.environ, "WRK_REPORT": str(self._report)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def interrupt(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)

    def result(self, timeout: float | None = None) -> Result:
        output, _ = self._process.communicate(timeout=timeout)
        try:
            if not self._report.exists():
                raise RuntimeError(f"wrk wrote no report ({' '.join(self.argv)}):\n{output}")
            data = json.loads(self._report.read_text())
        finally:
            self._dir.cleanup()
        latency = data["latency_us"]
        return Result(
            requests=int(data["requests"]),
            seconds=int(data["duration_us"]) / 1e6,
            errors={k: int(v) for k, v in data["errors"].items() if int(v)},
            p50_ms=latency["p50"] / 1000,
            p90_ms=latency["p90"] / 1000,
            p99_ms=latency["p99"] / 1000,
            max_ms=latency["max"] / 1000,
        )


def combined(results: list[Result]) -> Result:
    """Several windows of one load as one result: requests and seconds summed, so the rate is
    over all of them; each percentile the median window's (wrk reports no histogram to merge)."""
    errors: dict[str, int] = {}
    for result in results:
        for name, count in result.errors.items():
            errors[name] = errors.get(name, 0) + count
    return Result(
        requests=sum(r.requests for r in results),
        seconds=sum(r.seconds for r in results),
        errors=errors,
        p50_ms=statistics.median([r.p50_ms for r in results]),
        p90_ms=statistics.median([r.p90_ms for r in results]),
        p99_ms=statistics.median([r.p99_ms for r in results]),
        max_ms=max((r.max_ms for r in results), default=0.0),
    )


def run(wrk: str, load: Load) -> Result:
    return Run(wrk, load).result(timeout=load.duration + load.timeout + 30)
