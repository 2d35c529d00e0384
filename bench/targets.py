"""Issue 6's targets (and issue 3's cleanup target), each checked against one run's figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


def _refresh_vs_me(rps: Callable[[str], float | None]) -> float | None:
    """Both refresh rows against both GET /me rows, each measured just before its refresh row
    (a run without the second pair, from before it existed: the first pair alone)."""
    again = rps("refresh_again"), rps("me_again")
    if again[0] is None or again[1] is None:
        return _ratio(rps("refresh"), rps("me"))
    first = rps("refresh"), rps("me")
    if first[0] is None or first[1] is None:
        return None
    return (first[0] + again[0]) / (first[1] + again[1])


def check(backend: dict[str, Any], argon2: dict[str, Any] | None) -> list[Target]:
    """`backend` is one backend's section of the results JSON."""
    rows = {row["key"]: row for row in backend.get("rows", [])}

    def rps(key: str) -> float | None:
        return rows[key]["rps"] if key in rows else None

    baseline = backend.get("baseline_rps")
    bound = argon2["per_second_all_cores"] if argon2 else None
    found: list[Target] = [
        _at_least("GET /me vs baseline", _ratio(rps("me"), baseline), 0.7, "≥ 0.7x"),
        _at_least(
            "login vs argon2 bound (all cores)", _ratio(rps("login"), bound), 0.85, "≥ 0.85x"
        ),
        _at_least(
            "GET /me during logins vs idle",
            _ratio(rps("me_during_login"), rps("me")),
            0.5,
            "≥ 0.5x",
        ),
        _at_least("refresh vs GET /me", _refresh_vs_me(rps), 0.3, "≥ 0.3x"),
    ]
    errors = [
        rows[k]["error_count"]
        for k in ("register", "login", "refresh", "refresh_again")
        if k in rows
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
