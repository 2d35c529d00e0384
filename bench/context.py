"""What every part of a run shares: the plan, wrk, paths, the run id and the databases."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.databases import DatabaseFactory, TempDatabase
from bench.plan import Plan

REPO = Path(__file__).resolve().parent.parent
# The issuer every keyturn process of a run shares, so tokens from `keyturn serve` also work in
# the host app that mounts keyturn on the same database.
ISSUER = "http://keyturn.bench"


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}


@dataclass
class Context:
    plan: Plan
    wrk: str
    workdir: Path
    run_id: str
    databases: DatabaseFactory

    @property
    def python(self) -> str:
        return sys.executable

    @property
    def keyturn_bin(self) -> str:
        return str(Path(sys.executable).with_name("keyturn"))

    def keyturn_env(self, database: TempDatabase) -> dict[str, str]:
        """`keyturn serve`'s environment: rate limits off, nothing running in the background,
        and no KEYTURN_* setting of the caller's shell (a Redis URL, say) leaking in."""
        return {
            **clean_environ(),
            "KEYTURN_DATABASE_URL": database.url,
            "KEYTURN_RATE_LIMIT": "off",
            "KEYTURN_LOGIN_FAILURE_LIMIT": "1000000000",
            "KEYTURN_CLEANUP_INTERVAL": "0",  # the bench runs `keyturn cleanup` itself
            "KEYTURN_ISSUER": ISSUER,
        }
