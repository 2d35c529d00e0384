"""Signing key rotation: new tokens use the new key, old ones verify until they expire, and the
retired public key leaves the JWKS only after that (CONTRACT sections 1 and 4)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from keyturn import Keyturn, Settings
from tests.actions import bearer, login, register
from tests.clock import FakeClock
from tests.instances import serving
from tests.server_process import KEYTURN, server_env

TTL = 900  # KEYTURN_ACCESS_TOKEN_TTL's default, which the `settings` fixture keeps
SKEW = 60  # a retired key stays published this much longer than the tokens it signed


def kid_of(tokens: dict[str, Any]) -> str:
    kid: str = jwt.get_unverified_header(tokens["access_token"])["kid"]
    return kid


async def published_kids(client: httpx.AsyncClient) -> set[str]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return {key["kid"] for key in response.json()["keys"]}


async def verify_with_jwks(
    client: httpx.AsyncClient, tokens: dict[str, Any], clock: FakeClock
) -> dict[str, Any]:
    """What a resource server does: fetch the JWKS and verify with a standard JWT library."""
    keys = jwt.PyJWKSet.from_dict((await client.get("/.well-known/jwks.json")).json())
    key = next(k for k in keys.keys if k.key_id == kid_of(tokens))
    # PyJWT reads the real clock; the fake one may be ahead of it (an `iat` in the future).
    ahead = max(0.0, (clock.now - datetime.now(UTC)).total_seconds())
    claims: dict[str, Any] = jwt.decode(
        tokens["access_token"],
        key,
        algorithms=["EdDSA"],
        issuer="http://testserver",
        leeway=ahead + 1,
    )
    return claims


@pytest.fixture
async def second(settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """Another instance on the same database, with its own key ring."""
    async with serving(settings, clock, "203.0.113.8") as (_, http):
        yield http


async def test_rotation_keeps_old_tokens_valid_until_they_expire_and_then_drops_the_key(
    keyturn: Keyturn, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    old = await register(client)
    old_kid = kid_of(old)
    assert await published_kids(client) == {old_kid}

    clock.advance(100)
    new_kid = await keyturn.keys.rotate()
    assert new_kid != old_kid
    new = await login(client)
    assert kid_of(new) == new_kid
    assert await published_kids(client) == {old_kid, new_kid}
    for tokens in (old, new):
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
        assert (await verify_with_jwks(client, tokens, clock))["sub"] == old["user"]["id"]

    # The last second of the old token's life: still accepted, its key still published.
    clock.advance(TTL - 100 - 1)
    await keyturn.keys.reload()
    assert (await client.get("/me", headers=bearer(old))).status_code == 200
    assert old_kid in await published_kids(client)

    # Expired, but the key stays a little longer for tokens signed by instances not yet reloaded.
    clock.advance(2)
    await keyturn.keys.reload()
    assert (await client.get("/me", headers=bearer(old))).status_code == 401
    assert await published_kids(client) == {old_kid, new_kid}

    # A token the old key signed at the moment of rotation expires at rotation + TTL; an
    # instance that had not reloaded yet may sign with it a little later. At rotation + TTL +
    # SKEW every such token has expired, and the key is withdrawn.
    clock.advance(100 + SKEW - 2)
    await keyturn.keys.reload()
    assert old_kid in await published_kids(client)
    clock.advance(1)
    await keyturn.keys.reload()
    assert await published_kids(client) == {new_kid}
    refreshed = await client.post("/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert refreshed.status_code == 200
    assert kid_of(refreshed.json()) == new_kid
    assert (await client.get("/me", headers=bearer(refreshed.json()))).status_code == 200


async def test_rotating_twice_publishes_all_three_keys(
    keyturn: Keyturn, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    issued = [await register(client)]
    for _ in range(2):
        clock.advance(10)
        await keyturn.keys.rotate()
        issued.append(await login(client))
    kids = [kid_of(tokens) for tokens in issued]
    assert len(set(kids)) == 3
    assert await published_kids(client) == set(kids)
    for tokens in issued:
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
        await verify_with_jwks(client, tokens, clock)
    # Each retired key keeps the deadline of its own retirement.
    clock.advance(TTL + SKEW - 10 + 1)
    await keyturn.keys.reload()
    assert await published_kids(client) == set(kids[1:])
    clock.advance(10)
    await keyturn.keys.reload()
    assert await published_kids(client) == {kids[2]}


async def test_another_instance_learns_of_a_key_rotated_elsewhere(
    keyturn: Keyturn, client: httpx.AsyncClient, second: httpx.AsyncClient
) -> None:
    before = await register(client)
    new_kid = await keyturn.keys.rotate()

    # The second instance has not reloaded yet: it still signs with the retired key, and
    # the rotating instance accepts that, since the retired key is still published.
    from_second = await login(second)
    assert kid_of(from_second) == kid_of(before) != new_kid
    assert (await client.get("/me", headers=bearer(from_second))).status_code == 200

    # A token with a kid it has never seen makes it reload at once (at most once a second,
    # so that forged kids cannot make it query the database on every request).
    await asyncio.sleep(1.05)
    from_first = await login(client)
    assert kid_of(from_first) == new_kid
    assert (await second.get("/me", headers=bearer(from_first))).status_code == 200
    assert await published_kids(second) == {kid_of(before), new_kid}
    assert kid_of(await login(second)) == new_kid
    assert (await second.get("/me", headers=bearer(before))).status_code == 200


async def test_tokens_with_a_forged_kid_or_no_signature_are_refused(
    keyturn: Keyturn, client: httpx.AsyncClient
) -> None:
    tokens = await register(client)
    header = jwt.get_unverified_header(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    for kid in ("f" * 32, "../../etc/passwd", ""):
        forged = jwt.encode(claims, "secret-of-the-attacker-32-bytes!", "HS256", {"kid": kid})
        response = await client.get("/me", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    unsigned = jwt.encode(claims, "", "none", {"kid": header["kid"]})
    assert (
        await client.get("/me", headers={"Authorization": f"Bearer {unsigned}"})
    ).status_code == 401


async def test_keys_rotate_cli_activates_a_new_key_for_running_instances(
    keyturn: Keyturn, client: httpx.AsyncClient, clock: FakeClock, database_url: str
) -> None:
    old = await register(client)
    before_cli = clock.now
    process = await asyncio.create_subprocess_exec(
        KEYTURN,
        "keys",
        "rotate",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=server_env(database_url),
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    after_cli = datetime.now(UTC)
    assert process.returncode == 0, err.decode()
    printed = re.search(r"\b([0-9a-f]{32})\b", out.decode())
    assert printed is not None, out
    new_kid = printed.group(1)

    await keyturn.keys.reload()  # what every instance does within KEYTURN's 30 s reload interval
    new = await login(client)
    assert kid_of(new) == new_kid != kid_of(old)
    assert await published_kids(client) == {kid_of(old), new_kid}
    for tokens in (old, new):
        assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
        await verify_with_jwks(client, tokens, clock)

    # The CLI retired the old key on the real clock: somewhere between these two instants.
    clock.now = before_cli + timedelta(seconds=TTL + SKEW - 1)
    await keyturn.keys.reload()
    assert kid_of(old) in await published_kids(client)
    clock.now = after_cli + timedelta(seconds=TTL + SKEW + 1)
    await keyturn.keys.reload()
    assert await published_kids(client) == {new_kid}
