"""How big and how long: the full run (`make bench`) and the quick one (`make bench-quick`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    duration: float  # seconds of wrk load for each row
    slow_duration: float  # for rows bound by argon2 (login, register, GET /me during logins)
    warmup: float  # seconds of load thrown away before the first keyturn row
    connections: int  # wrk connections for every row (also "32 concurrent registrations")
    threads: int  # wrk threads
    login_connections: int  # logins that run beside GET /me in the mixed row
    users: int  # users whose tokens rotate (CONTRACT: 64)
    sessions_small: int  # rows in `sessions` for the small-table p99
    sessions_large: int  # rows in `sessions` for the large-table p99 and the cleanup
    audit_seconds: float  # per audit append measurement
    audit_writers: int  # concurrent appenders for "many writers"
    argon2_seconds: float  # per argon2 bound measurement
    rounds: int  # baseline, GET /me and refresh, one after the other, this many times
    login_windows: int  # the login row's windows, the argon2 bound measured between them
    login_window: float  # seconds of each
    host_app: bool  # also measure a host app that mounts keyturn
    fastapi_users_on: tuple[str, ...]  # backends on which to measure the fastapi-users app
    workers: int  # `keyturn serve --workers N` for the several-workers GET /me row
    workers_on: tuple[str, ...]  # backends on which to measure it (issue 6, item 4)
    p99_runs: int  # runs per table size whose median p99 is reported (`session_scale`)
    p99_window: float  # seconds of each of those runs, and of each window during the cleanup
    timeout: float = 30.0  # wrk's per-request timeout: slow logins are slow, not lost


FULL = Plan(
    name="full",
    duration=3.0,
    slow_duration=5.0,
    warmup=2.0,
    connections=32,
    threads=2,
    login_connections=8,
    users=64,
    sessions_small=10_000,
    sessions_large=1_000_000,
    audit_seconds=2.0,
    audit_writers=16,
    argon2_seconds=1.5,
    rounds=3,
    login_windows=3,
    login_window=3.0,
    host_app=True,
    fastapi_users_on=("sqlite", "postgresql"),
    workers=2,
    workers_on=("postgresql",),
    p99_runs=5,
    p99_window=3.0,
)

# A check that the harness works, in under two minutes on a slow shared machine: 126 s there
# with 50,000 sessions and fastapi-users on SQLite (and its first install, 27 s more), where
# it now takes about 105 s.
QUICK = Plan(
    name="quick",
    duration=1.0,
    slow_duration=2.0,
    warmup=1.0,
    connections=32,
    threads=2,
    login_connections=8,
    users=64,
    sessions_small=10_000,
    sessions_large=30_000,
    audit_seconds=0.4,
    audit_writers=16,
    argon2_seconds=1.0,
    rounds=1,
    login_windows=1,
    login_window=2.0,
    host_app=False,
    fastapi_users_on=(),  # its virtualenv alone takes half a minute to install
    workers=2,
    workers_on=("postgresql",),
    p99_runs=3,
    p99_window=1.0,
)
