"""Access tokens: short-lived EdDSA JWTs that any standard JWT library can verify (CONTRACT s.4)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

import jwt
import orjson

from keyturn.errors import Unauthorized
from keyturn.ids import new_id
from keyturn.security.signing_keys import ALGORITHM, KeyRing

REQUIRED_CLAIMS = ("iss", "sub", "sid", "iat", "exp", "jti")
_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class AccessClaims:
    subject: str  # user id
    session_id: str
    issued_at: int
    expires_at: int
    token_id: str


class AccessTokenCodec:
    """Signs with the ring's newest key; verifies against every published key.

    Verified tokens are remembered until they expire, so a client repeating its token costs a
    dictionary look-up instead of a signature check; the session check still runs every time.
    """

    def __init__(self, ring: KeyRing, *, issuer: str, ttl: int) -> None:
        self.ring = ring
        self.issuer = issuer
        self.ttl = ttl
        self._verified: dict[str, AccessClaims] = {}
        self._header: tuple[str, bytes] | None = None  # kid and its encoded JOSE header

    def issue(
        self, *, user_id: str, session_id: str, now: datetime, session_expires_at: datetime
    ) -> tuple[str, int]:
        """Return a signed token and its lifetime in seconds: the configured TTL, cut short at
        the session's absolute end, past which a verifier elsewhere must not accept it either."""
        if self.ring.signing_key is None or self.ring.signing_kid is None:
            raise RuntimeError("no signing key loaded")
        issued_at = int(now.timestamp())
        expires_at = min(issued_at + self.ttl, int(session_expires_at.timestamp()))
        claims = {
            "iss": self.issuer,
            "sub": user_id,
            "sid": session_id,
            "iat": issued_at,
            "exp": expires_at,
            "jti": new_id(),
        }
        # A compact JWS (RFC 7515 s.7.1) assembled here rather than by `jwt.encode`, whose
        # generic path (header merge, JSON encoder class, algorithm look-up) added two thirds
        # of the Ed25519 signature's own cost. PyJWT and any other JWT library verify it.
        signing_input = self._encoded_header() + b"." + _b64(orjson.dumps(claims))
        signature = self.ring.signing_key.sign(signing_input)
        token = (signing_input + b"." + _b64(signature)).decode("ascii")
        return token, expires_at - issued_at

    def _encoded_header(self) -> bytes:
        kid = self.ring.signing_kid
        if self._header is None or self._header[0] != kid:
            header = {"alg": ALGORITHM, "kid": kid, "typ": "JWT"}
            self._header = (str(kid), _b64(orjson.dumps(header)))
        return self._header[1]

    def verify(self, token: str, *, now: datetime) -> AccessClaims:
        """Claims of a valid token, or `Unauthorized` (never says which check failed)."""
        timestamp = now.timestamp()
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at > timestamp:
                return cached
            self._verified.pop(token, None)
            raise Unauthorized("The access token has expired.", token_presented=True)
        claims = self._decode(token, timestamp)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def forget(self) -> None:
        """Drop remembered verifications (after a key was withdrawn)."""
        self._verified.clear()

    def _decode(self, token: str, timestamp: float) -> AccessClaims:
        invalid = Unauthorized("The access token is invalid or expired.", token_presented=True)
        try:
            header = jwt.get_unverified_header(token)
            key = self.ring.verification_keys.get(str(header.get("kid")))
            if key is None or header.get("alg") != ALGORITHM:
                raise invalid
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise invalid from None
        try:
            claims = AccessClaims(
                subject=str(payload["sub"]),
                session_id=str(payload["sid"]),
                issued_at=int(payload["iat"]),
                expires_at=int(payload["exp"]),
                token_id=str(payload["jti"]),
            )
        except (TypeError, ValueError):
            raise invalid from None
        if claims.expires_at <= timestamp:
            raise invalid
        return claims


def _b64(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 s.2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")
