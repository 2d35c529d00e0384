"""keyturn's rows: GET /me, refresh, login, register, /me while logins run, a host app, and
GET /me with several workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
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


def round_key(key: str, number: int) -> str:
    """A row's key in round `number` of `rounds`: `me`, `me_2`, `me_3`, ..."""
    return key if number == 1 else f"{key}_{number}"


def serve_rows(
    ctx: Context,
    hello: Server,
    serve: Server,
    files: LuaFiles,
    argon2_rate: Callable[[], float],
) -> tuple[list[Row], tuple[float, ...]]:
    """The baseline and keyturn's own rows, and the argon2 bound (`argon2_rate`, every core
    hashing) measured between the login row's windows."""
    me = load(ctx, serve, "bearer.lua", "/me", str(files.access_tokens), "/me")
    login = load(
        ctx, serve, "login.lua", "/auth/login", str(files.credentials), "/auth/login", slow=True
    )
    register_args = (f"{ctx.run_id}k", "/auth/register", PASSWORD)
    measured = rounds(ctx, hello, serve, files, me)
    login_row, bound_samples = login_windows(ctx, serve, login, argon2_rate)
    measured += [
        login_row,
        rows.single(
            ctx.wrk,
            serve,
            load(ctx, serve, "register.lua", "/auth/register", *register_args, slow=True),
            "register",
            "POST /auth/register (32 concurrent)",
            "keyturn",
        ),
    ]
    return measured + during_logins(ctx, serve, me, login, "me", "keyturn"), bound_samples


def rounds(ctx: Context, hello: Server, serve: Server, files: LuaFiles, me: wrk.Load) -> list[Row]:
    """The baseline, GET /me and refresh, one after the other, `plan.rounds` times.

    Two targets divide one of these rows by another (GET /me by the baseline, refresh by GET
    /me). The machine's other load moves within a run, by a quarter and more over seconds on
    a shared host, so each is divided summed over the rounds: a slower stretch then weighs on
    both sides of a ratio, not on one row of one. Both servers stay up, idle when not loaded.
    """
    plan = ctx.plan
    hello_load = load(ctx, hello, "get.lua", "/hello")
    if plan.warmup:
        wrk.run(ctx.wrk, replace(hello_load, duration=plan.warmup))
        wrk.run(ctx.wrk, replace(me, duration=plan.warmup))
    threads = str(min(plan.threads, plan.connections))
    # Each refresh row starts on chains of its own: the previous row's last tokens were lost
    # in flight when wrk stopped. They are made before the rounds, so no round waits on hashes.
    chains = [files.refresh_tokens] + [
        fresh_refresh_tokens(
            serve.base_url, files.credentials, files.refresh_tokens.with_name(f"refresh_{n}.txt")
        )
        for n in range(2, plan.rounds + 1)
    ]
    measured: list[Row] = []
    for number, tokens in enumerate(chains, start=1):
        again = "" if number == 1 else f"round {number}, "
        baseline_label = "baseline: FastAPI hello world" + (f" (round {number})" if again else "")
        refresh = load(ctx, serve, "refresh.lua", "/auth/refresh", str(tokens), threads)
        for server, loaded, key, label, system in (
            (hello, hello_load, "baseline", baseline_label, "baseline"),
            (serve, me, "me", f"GET /me ({again}64 users rotating)", "keyturn"),
            (
                serve,
                refresh,
                "refresh",
                f"POST /auth/refresh ({again}32 concurrent chains)",
                "keyturn",
            ),
        ):
            settle(hello)
            settle(serve)
            measured.append(
                rows.single(
                    ctx.wrk, server, loaded, round_key(key, number), label, system, settled=True
                )
            )
    return measured


def login_windows(
    ctx: Context, serve: Server, login: wrk.Load, argon2_rate: Callable[[], float]
) -> tuple[Row, tuple[float, ...]]:
    """The login row in `plan.login_windows` windows, with the argon2 bound measured before,
    between and after them; the row sums the windows.

    The login target divides this row by the mean of those samples. A bound measured once, a
    minute away, could stand on a different machine than the row: on a shared host argon2's
    rate moves by a tenth from one second to the next (its memory bandwidth is shared too).
    Each window ends with about one hash per pool thread half done, which is lost: under 1 %
    of a window of three seconds, against keyturn.
    """
    plan = ctx.plan
    window = replace(login, duration=plan.login_window)
    samples: list[float] = []
    results: list[wrk.Result] = []
    cpu = rss = 0.0
    for _ in range(plan.login_windows):
        settle(serve)  # the previous window's queued logins drained
        samples.append(argon2_rate())  # the server idle
        measured, window_cpu, window_rss = rows.measure(
            ctx.wrk, serve, {"login": window}, settled=True
        )
        results.append(measured["login"])
        cpu += window_cpu
        rss = max(rss, window_rss)
    settle(serve)
    samples.append(argon2_rate())
    row = rows.row_from(
        "login",
        "POST /auth/login (32 concurrent)",
        "keyturn",
        wrk.combined(results),
        cpu_s=cpu,
        rss_mib=rss,
        note=f"{len(results)} windows of {plan.login_window:.0f} s, the argon2 bound between them",
    )
    row.worst_p99_ms = max(r.p99_ms for r in results)
    rows.show(row)
    return row, tuple(samples)


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
        rows.show(row)
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
    rows.show(row)
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
