"""Opaque tokens, successor derivation, and access-token signing (unit tests)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from keyturn.errors import Unauthorized
from keyturn.security import opaque_tokens
from keyturn.security.access_tokens import AccessTokenCodec
from keyturn.security.signing_keys import KeyRing, SodiumSigner, generate_key, load_private

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)  # a session that outlives every token here


def test_refresh_tokens_carry_256_bits_and_never_repeat() -> None:
    tokens = {opaque_tokens.new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    raw = base64.urlsafe_b64decode(next(iter(tokens)) + "=")
    assert len(raw) * 8 >= 256


def test_only_a_hash_is_stored_and_it_is_stable() -> None:
    token = opaque_tokens.new_token()
    digest = opaque_tokens.hash_token(token)
    assert digest == opaque_tokens.hash_token(token)
    assert token not in digest
    assert len(digest) == 64


def test_successor_is_deterministic_per_key_and_unguessable_without_it() -> None:
    key, other_key = secrets.token_bytes(32), secrets.token_bytes(32)
    token = opaque_tokens.new_token()
    successor = opaque_tokens.derive_successor(key, token)
    assert successor == opaque_tokens.derive_successor(key, token)
    assert successor != opaque_tokens.derive_successor(other_key, token)
    assert successor != token


def test_successor_derivation_does_not_change_between_versions() -> None:
    # A client retrying across an upgrade, inside the reuse grace, must get the same successor.
    key = bytes(range(32))
    successor = opaque_tokens.derive_successor(key, "kt-refresh-token-for-a-golden-value-0001")
    assert successor == "pq-XwvxBuWJKcxRQZu-0puOzqzcSh_pJfO7TD2KHfRY"


def _ring() -> KeyRing:
    generated = generate_key()
    private = load_private(generated.private_pem)
    return KeyRing(
        signing_kid=generated.kid,
        signing_key=private,
        verification_keys={generated.kid: private.public_key()},
        published=[generated.public_jwk],
    )


def test_access_token_has_the_contract_claims_and_kid() -> None:
    ring = _ring()
    codec = AccessTokenCodec(ring, issuer="https://auth.example", ttl=900)
    token, ttl = codec.issue(user_id="u1", session_id="s1", now=NOW, session_expires_at=LATER)
    header = jwt.get_unverified_header(token)
    assert header["kid"] == ring.signing_kid
    assert header["alg"] == "EdDSA"
    claims = codec.verify(token, now=NOW + timedelta(seconds=899))
    assert (claims.subject, claims.session_id, ttl) == ("u1", "s1", 900)


def test_an_access_token_never_outlives_its_sessions_absolute_end() -> None:
    codec = AccessTokenCodec(_ring(), issuer="https://auth.example", ttl=900)
    ends = NOW + timedelta(seconds=300)
    token, ttl = codec.issue(user_id="u1", session_id="s1", now=NOW, session_expires_at=ends)
    assert ttl == 300
    # What a verifier elsewhere reads: PyJWT against the public key.
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == int(ends.timestamp())
    with pytest.raises(Unauthorized):
        codec.verify(token, now=ends)


def test_expired_tampered_and_foreign_tokens_are_refused() -> None:
    ring = _ring()
    codec = AccessTokenCodec(ring, issuer="https://auth.example", ttl=900)
    token, _ = codec.issue(user_id="u1", session_id="s1", now=NOW, session_expires_at=LATER)
    with pytest.raises(Unauthorized):
        AccessTokenCodec(ring, issuer="https://auth.example", ttl=900).verify(
            token, now=NOW + timedelta(seconds=900)
        )
    header, payload, signature = token.split(".")
    with pytest.raises(Unauthorized):
        codec.verify(f"{header}.{payload}.{signature[:-4]}AAAA", now=NOW)
    other = AccessTokenCodec(_ring(), issuer="https://auth.example", ttl=900)
    with pytest.raises(Unauthorized):
        other.verify(token, now=NOW)
    with pytest.raises(Unauthorized):
        AccessTokenCodec(ring, issuer="https://evil.example", ttl=900).verify(token, now=NOW)
    for junk in ("", "abc", "a.b.c", "\x00" * 10):
        with pytest.raises(Unauthorized):
            codec.verify(junk, now=NOW)


def test_an_unsigned_token_is_refused() -> None:
    ring = _ring()
    codec = AccessTokenCodec(ring, issuer="https://auth.example", ttl=900)
    forged = jwt.encode(
        {
            "iss": "https://auth.example",
            "sub": "u1",
            "sid": "s1",
            "iat": 1,
            "exp": 2**40,
            "jti": "x",
        },
        key="",
        algorithm="none",
        headers={"kid": ring.signing_kid},
    )
    with pytest.raises(Unauthorized):
        codec.verify(forged, now=NOW)


def test_remembered_tokens_still_expire() -> None:
    codec = AccessTokenCodec(_ring(), issuer="https://auth.example", ttl=60)
    token, _ = codec.issue(user_id="u1", session_id="s1", now=NOW, session_expires_at=LATER)
    codec.verify(token, now=NOW)
    with pytest.raises(Unauthorized):
        codec.verify(token, now=NOW + timedelta(seconds=61))


def test_jwk_is_public_only() -> None:
    jwk = generate_key().public_jwk
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert "d" not in jwk


def test_the_sodium_signer_signs_exactly_as_cryptography_does() -> None:
    private = load_private(generate_key().private_pem)
    signer = SodiumSigner(private)
    for message in (b"", b"header.claims", bytes(range(256)) * 4):
        assert signer.sign(message) == private.sign(message)
        private.public_key().verify(signer.sign(message), message)  # raises if invalid
