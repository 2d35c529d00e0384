"""Opaque bearer tokens: generation, the hash that is stored, and successor derivation.

Only `hash_token(token)` is ever stored (Lucia's session guide): a database dump yields
nothing a client could present. A refresh token's successor is derived with HMAC-SHA256 from a
per-session key and the predecessor itself, so a retried or racing refresh recomputes the very
same successor without the successor ever being stored in a usable form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_BYTES = 32  # 256 bits of entropy (CONTRACT section 4)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_token() -> str:
    """A fresh random token of 256 bits, URL-safe."""
    return _encode(secrets.token_bytes(TOKEN_BYTES))


def hash_token(token: str) -> str:
    """The only form in which a bearer token is stored: SHA-256, hex.

    A plain hash is enough here (unlike passwords): the input has 256 bits of entropy, so
    there is nothing to brute-force.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# HMAC-SHA256 keyed once per rotation key, then copied per token: a third of the one-shot
# `hmac.digest`'s cost, which sets OpenSSL's HMAC up anew each call. Keys are the server's
# shared secret and, for a retry after the previous release, a session's own: a few at most.
_keyed: dict[bytes, hmac.HMAC] = {}


def derive_successor(rotation_key: bytes, token: str) -> str:
    """The refresh token that replaces `token`; the same inputs always give the same output."""
    keyed = _keyed.get(rotation_key)
    if keyed is None:
        if len(_keyed) >= 64:
            _keyed.clear()
        keyed = _keyed[rotation_key] = hmac.new(rotation_key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(token.encode("utf-8", "surrogatepass"))
    return _encode(mac.digest())


def looks_like_token(value: str) -> bool:
    """Cheap shape check before touching the database."""
    return 20 <= len(value) <= 128 and value.isascii()
