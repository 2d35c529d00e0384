"""A row of the results table: one load against one server, with what the server spent on it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import wrk
from bench.process import RssSampler, Server, cpu_seconds


@dataclass
class Row:
    key: str  # stable name in the JSON (`me`, `login`, `fastapi_users_me`, ...)
    label: str
    system: str  # "baseline", "keyturn" or "fastapi-users"
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_request: float | None = None
    rss_peak_mib: float | None = None
    note: str = ""
    worst_p99_ms: float | None = None  # when the row is one of several windows: their worst

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_count": self.error_count}


def measure(
    wrk_path: str,
    server: Server,
    loads: dict[str, wrk.Load],
    *,
    settled: bool = False,
) -> tuple[dict[str, wrk.Result], float, float]:
    """Run several loads at once against one server: (results, server CPU s, peak RSS MiB).
    `settled`: the caller has just waited for the server to drain (see `settle`)."""
    if not settled:
        settle(server)
    cpu_before = cpu_seconds(server.pid)
    with RssSampler(server.pid) as rss:
        runs = {name: wrk.Run(wrk_path, load) for name, load in loads.items()}
        results = {
            name: run.result(timeout=loads[name].duration + loads[name].timeout + 30)
            for name, run in runs.items()
        }
    cpu = cpu_seconds(server.pid) - cpu_before
    return results, cpu, rss.peak / 2**20


def settle(server: Server, *, busy: float = 0.1, longest: float = 20.0) -> None:
    """Wait until the server has drained the previous load (below `busy` of a core for 0.25 s),
    so one row's backlog is not billed to the next."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        before = cpu_seconds(server.pid)
        time.sleep(0.25)
        if cpu_seconds(server.pid) - before < busy * 0.25:
            return


def row_from(
    key: str,
    label: str,
    system: str,
    result: wrk.Result,
    *,
    cpu_s: float | None = None,
    cpu_requests: int | None = None,
    rss_mib: float | None = None,
    note: str = "",
) -> Row:
    requests = cpu_requests if cpu_requests is not None else result.requests
    return Row(
        key=key,
        label=label,
        system=system,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        requests=result.requests,
        errors=dict(result.errors),
        cpu_ms_per_request=(cpu_s * 1000 / requests) if cpu_s is not None and requests else None,
        rss_peak_mib=rss_mib,
        note=note,
    )


def single(
    wrk_path: str,
    server: Server,
    load: wrk.Load,
    key: str,
    label: str,
    system: str,
    *,
    settled: bool = False,
) -> Row:
    results, cpu, rss = measure(wrk_path, server, {key: load}, settled=settled)
    row = row_from(key, label, system, results[key], cpu_s=cpu, rss_mib=rss)
    show(row)
    return row


def show(row: Row, note: str = "") -> None:
    """One row on the run's console, as it is measured."""
    print(f"  {row.label:<52} {describe(row)}{note}", flush=True)


def describe(row: Row) -> str:
    cpu = f"{row.cpu_ms_per_request:.2f} ms CPU/req" if row.cpu_ms_per_request else "-"
    errors = f", {row.error_count} errors {row.errors}" if row.error_count else ""
    return (
        f"{row.rps:9.1f} req/s  p50 {row.p50_ms:7.1f} ms  p99 {row.p99_ms:7.1f} ms  {cpu}{errors}"
    )
