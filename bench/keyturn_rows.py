"""keyturn's rows: GET /me, refresh, login, register, /me while logins run, a host app, and
GET /me with several workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import rows, wrk
from bench.context import Context
from bench.process import Server, machine_ticks, process_cpu_seconds, worker_pids
from bench.rows import Row, settle
from bench.users import PASSWORD, LuaFiles, fresh_refresh_tokens


def load(
    ctx: Context, server: Server, script: str, path: str, *args: str, slow: bool = False
) -> wrk.Load:
    """A load with the plan's settings; `slow` for rows bound by argon2 (longer, so that the
    first answers, queued behind 32 hashes, are not most of the window)."""
    plan = ctx.plan
    return wrk.Load(
        base_url=server.base_url,
        script=script,
        path=path,
        args=args,
        connections=plan.connections,
        threads=plan.threads,
        duration=plan.slow_duration if slow else plan.duration,
        timeout=plan.timeout,
    )


def baseline(ctx: Context, hello: Server, key: str = "baseline") -> Row:
    if ctx.plan.warmup:
        warm = load(ctx, hello, "get.lua", "/hello")
        wrk.run(ctx.wrk, replace(warm, duration=ctx.plan.warmup))
    label = "baseline: FastAPI hello world" + (" (again)" if key != "baseline" else "")
    return rows.single(
        ctx.wrk, hello, load(ctx, hello, "get.lua", "/hello"), key, label, "baseline"
    )


def serve_rows(
    ctx: Context, serve: Server, files: LuaFiles, argon2_rate: Callable[[], float]
) -> tuple[list[Row], tuple[float, float]]:
    """keyturn's own rows, and the argon2 bound (`argon2_rate`, every core hashing) measured
    right before and right after the login row."""
    me = load(ctx, serve, "bearer.lua", "/me", str(files.access_tokens), "/me")
    if ctx.plan.warmup:
        wrk.run(ctx.wrk, replace(me, duration=ctx.plan.warmup))
    threads = str(min(ctx.plan.threads, ctx.plan.connections))
    login = load(
        ctx, serve, "login.lua", "/auth/login", str(files.credentials), "/auth/login", slow=True
    )
    register_args = (f"{ctx.run_id}k", "/auth/register", PASSWORD)

    def refresh(tokens: Path, key: str, label: str) -> Row:
        chains = load(ctx, serve, "refresh.lua", "/auth/refresh", str(tokens), threads)
        return rows.single(ctx.wrk, serve, chains, key, label, "keyturn")

    # Refresh is compared with GET /me (a target), so each refresh row follows a GET /me row
    # and the target divides the two refresh rows by the two GET /me rows: a slower stretch of
    # the shared machine then weighs on both sides, not on one row of one.
    measured = [
        rows.single(ctx.wrk, serve, me, "me", "GET /me (64 users rotating)", "keyturn"),
        refresh(files.refresh_tokens, "refresh", "POST /auth/refresh (32 concurrent chains)"),
    ]
    second_chains = fresh_refresh_tokens(
        serve.base_url, files.credentials, files.refresh_tokens.with_name("refresh_again.txt")
    )
    measured += [
        rows.single(ctx.wrk, serve, me, "me_again", "GET /me (again)", "keyturn"),
        refresh(second_chains, "refresh_again", "POST /auth/refresh (again, new chains)"),
    ]
    # The login target divides by the bound measured beside the row, before and after it, as
    # rows are divided by a baseline measured at the start and the end: the machine's other
    # load moves within a run (by a quarter, in some runs), and a bound measured a minute
    # earlier could stand on a different machine than the row.
    settle(serve)
    before = argon2_rate()
    measured.append(
        rows.single(ctx.wrk, serve, login, "login", "POST /auth/login (32 concurrent)", "keyturn")
    )
    settle(serve)  # its queued logins drained
    around_login = (before, argon2_rate())
    measured += [
        rows.single(
            ctx.wrk,
            serve,
            load(ctx, serve, "register.lua", "/auth/register", *register_args, slow=True),
            "register",
            "POST /auth/register (32 concurrent)",
            "keyturn",
        ),
    ]
    return measured + during_logins(ctx, serve, me, login, "me", "keyturn"), around_login


def during_logins(
    ctx: Context, server: Server, reader: wrk.Load, login: wrk.Load, key: str, system: str
) -> list[Row]:
    """The reader and a saturating login load at the same time, one row for each."""
    logins = replace(login, connections=ctx.plan.login_connections, threads=1)
    reader = replace(reader, duration=login.duration)
    results, cpu, rss = rows.measure(ctx.wrk, server, {"reader": reader, "login": logins})
    total = results["reader"].requests + results["login"].requests
    reader_label = (
        "GET /me while logins run" if system == "keyturn" else "GET /users/me while logins run"
    )
    measured = [
        rows.row_from(
            f"{key}_during_login",
            reader_label,
            system,
            results["reader"],
            cpu_s=cpu,
            cpu_requests=total,
            rss_mib=rss,
            note="CPU per request over both loads",
        ),
        rows.row_from(
            f"{key}_during_login_logins",
            f"  … the logins beside it ({ctx.plan.login_connections} concurrent)",
            system,
            results["login"],
        ),
    ]
    for row in measured:
        print(f"  {row.label:<52} {rows.describe(row)}", flush=True)
    return measured


def mounted_rows(ctx: Context, mounted: Server, files: LuaFiles) -> list[Row]:
    return [
        rows.single(
            ctx.wrk,
            mounted,
            load(ctx, mounted, "get.lua", "/hello"),
            "host_hello",
            "host app: GET /hello behind keyturn's middleware",
            "keyturn",
        ),
        rows.single(
            ctx.wrk,
            mounted,
            load(
                ctx, mounted, "bearer.lua", "/api/whoami", str(files.access_tokens), "/api/whoami"
            ),
            "host_protected",
            "host app: own route behind Depends(current_user)",
            "keyturn",
        ),
    ]


def several_workers(
    ctx: Context, server: Server, files: LuaFiles, one_worker: Row
) -> tuple[Row, dict[str, Any]]:
    """GET /me exactly as the `me` row loads it (warm-up included), against `keyturn serve
    --workers N`; CPU and RSS are summed over the parent and its children, and the CPU is also
    split per worker, which shows whether both took a share of wrk's connections."""
    me = load(ctx, server, "bearer.lua", "/me", str(files.access_tokens), "/me")
    if ctx.plan.warmup:
        wrk.run(ctx.wrk, replace(me, duration=ctx.plan.warmup))
    rows.settle(server)
    pids = worker_pids(server.pid)
    before = {pid: process_cpu_seconds(pid) for pid in pids}
    busy_before, total_before = machine_ticks()
    results, cpu, rss = rows.measure(ctx.wrk, server, {"me": me}, settled=True)
    busy_after, total_after = machine_ticks()
    spent = [max(0.0, process_cpu_seconds(pid) - before[pid]) for pid in pids]
    # How busy all cores were (wrk, PostgreSQL, the workers and anything else on the machine):
    # near 100 % means a second worker had no idle core to run on.
    total = total_after - total_before
    machine_busy = (busy_after - busy_before) / total if total else None
    workers = len(pids)
    row = rows.row_from(
        "me_workers",
        f"GET /me, {workers} workers (64 users rotating)",
        "keyturn",
        results["me"],
        cpu_s=cpu,
        rss_mib=rss,
        note=f"server CPU and RSS summed over the parent and its children ({workers} workers)",
    )
    ratio = row.rps / one_worker.rps if one_worker.rps else None
    shares = [s / sum(spent) for s in spent] if sum(spent) else []
    print(f"  {row.label:<52} {rows.describe(row)}", flush=True)
    print(
        f"  {'':<52} {'-' if ratio is None else f'{ratio:.2f}'}x one worker; CPU split "
        + " / ".join(f"{share * 100:.0f} %" for share in shares)
        + ("" if machine_busy is None else f"; machine {machine_busy * 100:.0f} % busy"),
        flush=True,
    )
    return row, {
        "workers": workers,
        "rps": row.rps,
        "one_worker_rps": one_worker.rps,
        "vs_one_worker": ratio,
        "cpu_ms_per_request": row.cpu_ms_per_request,
        "one_worker_cpu_ms_per_request": one_worker.cpu_ms_per_request,
        "cpu_share_by_worker": shares,
        "machine_cpu_busy": machine_busy,
        "cores": os.cpu_count(),
    }
