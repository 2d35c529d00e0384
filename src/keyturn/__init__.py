"""keyturn: user sessions and authentication for Python, as a server or inside a FastAPI app."""

from keyturn.config import Argon2Parameters, Settings, load_settings
from keyturn.errors import KeyturnError
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
