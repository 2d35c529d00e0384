"""Issue 6's targets (and issue 3's cleanup target), each checked against one run's figures."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.keyturn_rows import round_key


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    value: float | None
    ok: bool | None  # None: not measured in this run

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "value": self.value, "ok": self.ok}


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or not bottom:
        return None
    return top / bottom


def _at_least(name: str, value: float | None, floor: float, goal: str) -> Target:
    return Target(name, goal, value, None if value is None else value >= floor)


def _at_most(name: str, value: float | None, ceiling: float, goal: str) -> Target:
    return Target(name, goal, value, None if value is None else value <= ceiling)


def _summed_over_rounds(rps: Callable[[str], float | None], top: str, bottom: str) -> float | None:
    """`top`'s rows against `bottom`'s, each summed over the rounds (`keyturn_rows.rounds`) in
    which both were measured: a slower stretch of the shared machine weighs on both sides."""
    tops, bottoms = [], []
    for number in itertools.count(1):
        a, b = rps(round_key(top, number)), rps(round_key(bottom, number))
        if a is None or b is None:
            break
        tops.append(a)
        bottoms.append(b)
    return _ratio(sum(tops), sum(bottoms)) if tops else None


def check(backend: dict[str, Any], argon2: dict[str, Any] | None) -> list[Target]:
    """`backend` is one backend's section of the results JSON."""
    rows = {row["key"]: row for row in backend.get("rows", [])}

    def rps(key: str) -> float | None:
        return rows[key]["rps"] if key in rows else None

    bound = argon2["per_second_all_cores"] if argon2 else None
    found: list[Target] = [
        _at_least("GET /me vs baseline", _summed_over_rounds(rps, "me", "baseline"), 0.7, "≥ 0.7x"),
        _at_least(
            "login vs argon2 bound (all cores)", _ratio(rps("login"), bound), 0.85, "≥ 0.85x"
        ),
        _at_least(
            "GET /me during logins vs idle",
            _ratio(rps("me_during_login"), rps("me")),
            0.5,
            "≥ 0.5x",
        ),
        _at_least("refresh vs GET /me", _summed_over_rounds(rps, "refresh", "me"), 0.3, "≥ 0.3x"),
    ]
    errors = [
        row["error_count"]
        for key, row in rows.items()
        if key in ("register", "login") or key.startswith("refresh")
    ]
    found.append(
        _at_most(
            "errors, 32 concurrent register/login/refresh",
            float(sum(errors)) if errors else None,
            0,
            "0",
        )
    )
    scale = backend.get("sessions")
    if scale:
        found.append(
            _at_most(
                "GET /me p99, large vs small table", scale["p99_large_vs_small"], 1.2, "≤ 1.2x"
            )
        )
        found.append(
            _at_most(
                "GET /me p99 during cleanup vs without",
                scale["p99_cleanup_vs_without"],
                2.0,
                "≤ 2x",
            )
        )
        found.append(
            _at_most(
                "GET /me p99 during cleanup (ms), worst window",
                scale["me_during_cleanup"].get("worst_p99_ms")
                or scale["me_during_cleanup"]["p99_ms"],
                50.0,
                "< 50 ms",
            )
        )
    found.append(_at_most("server RSS under load (MiB)", backend.get("rss_peak_mib"), 150, "< 150"))
    return found
