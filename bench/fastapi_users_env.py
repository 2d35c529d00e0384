"""fastapi-users' own virtualenv (bench/.venv-fastapi-users): never in keyturn's dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv-fastapi-users"
REQUIREMENTS = (
    "fastapi-users[sqlalchemy]==15.0.5",
    "aiosqlite",
    "asyncpg",
    "uvicorn[standard]",
)


def ensure() -> Path | None:
    """The venv's python, created on first use; None (and why) when pip cannot install it."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    wanted = "\n".join(REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"bench: installing fastapi-users into {VENV.name}/ (first run only) ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", str(VENV)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *REQUIREMENTS,
        ],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"bench: `{' '.join(argv[:4])} ...` failed:\n{done.stderr.strip()[-2000:]}")
            return None
    stamp.write_text(wanted)
    return python
