"""What every use case is told about the world: the time, and who is asking from where."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The caller's address (by the trusted-proxy rule) and user agent, for sessions and audit."""

    ip: str | None = None
    user_agent: str | None = None

    @classmethod
    def unknown(cls) -> ClientInfo:
        return cls()
