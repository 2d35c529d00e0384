"""`python -m bench.run [--quick]`: every measurement, then results JSON and docs/performance.md.

For each backend (SQLite, then PostgreSQL): the baseline hello-world app, the real
`keyturn serve`, a host app that mounts keyturn, many sessions and cleanup, audit appends, and
the same shape built with fastapi-users. All servers run one uvicorn worker, except one more
`keyturn serve --workers 2` on PostgreSQL for GET /me; wrk drives them from outside; only one
server is under load at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import argon2_bound, audit_rate, fastapi_users_env, report, servers, session_scale
from bench import targets as targets_module
from bench.context import REPO, Context
from bench.databases import POSTGRESQL, SQLITE, DatabaseFactory, postgres_available
from bench.fastapi_users_rows import fastapi_users_rows
from bench.keyturn_rows import load, mounted_rows, serve_rows, several_workers
from bench.plan import FULL, QUICK, Plan
from bench.process import running
from bench.rows import Row, settle
from bench.users import emails, keyturn_user, parallel, seed_fastapi_users, write_lua_files
from bench.wrk import ensure_wrk
from keyturn.config import load_settings


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Phases:
    """Prints how long each part of a backend's run took (the time budget is tight)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        print(f"  [{now - self.started:5.0f} s] {name} took {now - self.last:.1f} s", flush=True)
        self.last = now


def run_backend(
    ctx: Context, backend: str, fastapi_users_python: Path | None, fastapi_users_missing: str
) -> tuple[dict[str, Any], list[str]]:
    """Every measurement on one backend; returns its results section and what was skipped."""
    plan = ctx.plan
    skipped: list[str] = []
    print(f"\n== {backend} ==", flush=True)
    phase = Phases()
    measured: list[Row] = []
    workers: dict[str, Any] | None = None
    database = ctx.databases.create(backend, "keyturn")
    env = ctx.keyturn_env(database)
    with running(servers.keyturn_serve(ctx, database)) as serve:
        users = parallel(keyturn_user(serve.base_url), emails(ctx.run_id, "k", plan.users))
        files = write_lua_files(ctx.workdir / f"keyturn-{backend}", users)
        phase(f"keyturn serve up, {len(users)} users registered")
        with running(servers.hello(ctx)) as hello:
            keyturn_rows, around_login = serve_rows(
                ctx, hello, serve, files, partial(all_cores_rate, plan)
            )
        measured += keyturn_rows
        phase("baseline and keyturn rows (and the argon2 bound between login windows)")
        bound = measure_argon2(plan, around_login)
        phase("argon2 bound on one core")
        if plan.host_app:
            with running(servers.mounted(ctx, database)) as host:
                measured += mounted_rows(ctx, host, files)
            phase("host app rows")
        if backend in plan.workers_on:
            settle(serve)  # the one-worker server drains its queued logins first
            one_worker = next(r for r in keyturn_rows if r.key == "me")
            with running(servers.keyturn_serve(ctx, database, workers=plan.workers)) as several:
                phase(f"keyturn serve --workers {plan.workers} up")
                workers_row, workers = several_workers(ctx, several, files, one_worker)
            measured.append(workers_row)
            phase(f"GET /me with {plan.workers} workers")
        me = load(ctx, serve, "bearer.lua", "/me", str(files.access_tokens), "/me")
        scale = session_scale.measure(ctx, serve, database, me, env)
        phase("sessions and cleanup")
    audit = audit_rate.measure(ctx, database, env)
    phase("audit appends")
    if backend not in plan.fastapi_users_on:
        skipped.append(f"fastapi-users on {backend}: not in the {plan.name} run")
    elif fastapi_users_python is None:
        skipped.append(f"fastapi-users on {backend}: {fastapi_users_missing}")
    else:
        fu_database = ctx.databases.create(backend, "fastapi_users")
        with running(servers.fastapi_users(ctx, fastapi_users_python, fu_database)) as fu:
            fu_users = seed_fastapi_users(
                fastapi_users_python, fu_database.url, emails(ctx.run_id, "f", plan.users)
            )
            fu_files = write_lua_files(ctx.workdir / f"fastapi-users-{backend}", fu_users)
            measured += fastapi_users_rows(ctx, fu, fu_files)
        phase("fastapi-users rows")
    scale_rows = [scale.me_small, scale.me_large, scale.me_during_cleanup]
    rss = [r.rss_peak_mib for r in [*keyturn_rows, *scale_rows] if r.rss_peak_mib]
    section = _section(database.url, measured + scale_rows, scale, audit, max(rss))
    if workers is not None:
        section["workers"] = workers
    section["argon2"] = asdict(bound)
    section["login_vs_argon2_pool"] = _login_vs(section, bound.per_second_pool)
    section["targets"] = [t.to_json() for t in targets_module.check(section, section["argon2"])]
    return section, skipped


def all_cores_rate(plan: Plan) -> float:
    """argon2 verifications per second at keyturn's configured cost, every core hashing."""
    rate = argon2_bound.verifications_per_second(
        load_settings({}).argon2, os.cpu_count() or 1, plan.argon2_seconds
    )
    print(f"  argon2id on every core: {rate:.1f}/s", flush=True)
    return rate


def measure_argon2(plan: Plan, all_cores_samples: Sequence[float]) -> argon2_bound.Argon2Bound:
    """The bound at keyturn's configured cost, measured while no server is busy; its all-cores
    rate is the mean of `all_cores_samples` (taken beside the login row)."""
    settings = load_settings({})
    bound = argon2_bound.measure(
        settings.argon2,
        cores=os.cpu_count() or 1,
        pool=settings.hash_concurrency,
        seconds=plan.argon2_seconds,
        all_cores_samples=all_cores_samples,
    )
    print(
        f"  argon2id: {bound.per_second_all_cores:.1f}/s on {bound.cores} cores, "
        f"{bound.per_second_pool:.1f}/s with the pool of {bound.pool_threads}",
        flush=True,
    )
    return bound


def _section(
    url: str,
    measured: list[Row],
    scale: session_scale.SessionScale,
    audit: audit_rate.AuditRate,
    rss_peak_mib: float,
) -> dict[str, Any]:
    baselines = [r.rps for r in measured if r.system == "baseline"]
    baseline_rps = sum(baselines) / len(baselines)
    login = next((r for r in measured if r.key == "login"), None)
    return {
        "database": url.split("://", 1)[0],
        "baseline_rps": baseline_rps,
        "baseline_spread": (max(baselines) - min(baselines)) / baseline_rps,
        "rss_peak_mib": rss_peak_mib,
        "rows": [
            {**row.to_json(), "vs_baseline": row.rps / baseline_rps if baseline_rps else None}
            for row in measured
        ],
        "sessions": {
            **asdict(scale),
            "p99_large_vs_small": scale.p99_large_vs_small,
            "p99_cleanup_vs_without": scale.p99_cleanup_vs_without,
        },
        "audit": {
            **asdict(audit),
            "append_ms": audit.append_ms,
            # What the event adds, as a share of one login at the login throughput measured.
            "share_of_login": audit.append_ms / 1000 * login.rps if login else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter loads")
    parser.add_argument(
        "--backends", default=f"{SQLITE},{POSTGRESQL}", help="comma-separated: sqlite,postgresql"
    )
    parser.add_argument("--no-fastapi-users", action="store_true", help="skip the comparison")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument(
        "--doc-from", type=Path, help="only rewrite docs/performance.md from a results JSON"
    )
    args = parser.parse_args(argv)
    if args.doc_from is not None:
        report.update_doc(json.loads(args.doc_from.read_text()), args.doc_from.resolve())
        return 0
    plan = QUICK if args.quick else FULL

    wrk_path = ensure_wrk()
    if wrk_path is None:
        print("bench: skipped: wrk is not available (see above).")
        return 0
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    load_start = _loadavg()
    skipped: list[str] = []
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if POSTGRESQL in backends and (why := postgres_available()) is not None:
        print(f"bench: PostgreSQL is not reachable ({why}); measuring SQLite only.")
        skipped.append(f"PostgreSQL: not reachable ({why})")
        backends.remove(POSTGRESQL)
    wanted = not args.no_fastapi_users and any(b in plan.fastapi_users_on for b in backends)
    fu_python = fastapi_users_env.ensure() if wanted else None
    fu_missing = (
        "left out (--no-fastapi-users)"
        if args.no_fastapi_users
        else "its virtualenv could not be installed"
    )

    print(f"bench: {plan.name} run", flush=True)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "wrk": subprocess.run(
                [wrk_path, "--version"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[:1],
            "loadavg_start": load_start,
        },
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-") as workdir:
        ctx = Context(
            plan=plan,
            wrk=wrk_path,
            workdir=Path(workdir),
            run_id=uuid.uuid4().hex[:8],
            databases=DatabaseFactory(Path(workdir)),
        )
        try:
            for backend in backends:
                section, missed = run_backend(ctx, backend, fu_python, fu_missing)
                skipped += missed
                results["backends"][backend] = section
        finally:
            ctx.databases.drop_all()
    results["skipped"] = skipped
    results["machine"]["loadavg_end"] = _loadavg()
    results["seconds"] = time.perf_counter() - started
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    path = report.write_json(results, stamp)
    if not args.no_doc:
        report.update_doc(results, path)
    print(f"\nbench: done in {results['seconds']:.0f} s; wrote {path.relative_to(REPO)}")
    print(report.markdown(results, path))
    return 0


def _login_vs(section: dict[str, Any], bound: float) -> float | None:
    login = next((r for r in section["rows"] if r["key"] == "login"), None)
    return login["rps"] / bound if login and bound else None


if __name__ == "__main__":
    sys.exit(main())
