"""keyturn: user sessions and authentication for Python, as a server or inside a FastAPI app."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from keyturn.config import Argon2Parameters, Settings, load_settings
from keyturn.errors import KeyturnError

if TYPE_CHECKING:
    from keyturn.facade import Keyturn
    from keyturn.services.sessions import Principal
    from keyturn.storage.records import Session, User

__all__ = [
    "Argon2Parameters",
    "Keyturn",
    "KeyturnError",
    "Principal",
    "Session",
    "Settings",
    "User",
    "load_settings",
]
__version__ = "0.1.0"

# Imported on first use (PEP 562): the web stack and the services take most of a second of
# CPU to import, which a command such as `keyturn cleanup`, run by cron beside a busy server,
# does not need.
_LAZY = {
    "Keyturn": "keyturn.facade",
    "Principal": "keyturn.services.sessions",
    "Session": "keyturn.storage.records",
    "User": "keyturn.storage.records",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keyturn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
