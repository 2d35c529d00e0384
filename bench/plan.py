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
    host_app: bool  # also measure a host app that mounts keyturn
    fastapi_users_on: tuple[str, ...]  # backends on which to measure the fastapi-users app
    baseline_twice: bool  # measure the baseline again at the end (shows drift from other load)
    workers: int  # `keyturn serve --workers N` for the several-workers GET /me row
    workers_on: tuple[str, ...]  # backends on which to measure it (issue 6, item 4)
    p99_runs: int  # runs per table size whose median p99 is reported (`session_scale`)
    timeout: float = 30.0  # wrk's per-request timeout: slow logins are slow, not lost


FULL = Plan(
    name="full",
    duration=6.0,
    slow_duration=6.0,
    warmup=2.0,
    connections=32,
    threads=2,
    login_connections=8,
    users=64,
    sessions_small=10_000,
    sessions_large=1_000_000,
    audit_seconds=3.0,
    audit_writers=16,
    argon2_seconds=3.0,
    host_app=True,
    fastapi_users_on=("sqlite", "postgresql"),
    baseline_twice=True,
    workers=2,
    workers_on=("postgresql",),
    p99_runs=5,
)

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
    sessions_large=50_000,
    audit_seconds=0.4,
    audit_writers=16,
    argon2_seconds=1.0,
    host_app=False,
    fastapi_users_on=("sqlite",),
    baseline_twice=False,
    workers=2,
    workers_on=("postgresql",),
    p99_runs=3,  # a check that the harness works: 111 s with five, of the 120 allowed
)
