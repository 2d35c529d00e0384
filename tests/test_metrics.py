"""/metrics: Prometheus text, loopback-only by default."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from keyturn import Keyturn, Settings
from keyturn.metrics import Metrics
from keyturn.web.app import create_app
from tests.actions import PASSWORD, register
from tests.clock import FakeClock


async def _client(keyturn: Keyturn, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(keyturn), client=(peer, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def loopback(keyturn: Keyturn) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(keyturn, "127.0.0.1") as http:
        yield http


async def test_metrics_count_requests_logins_refreshes_and_revocations(
    loopback: httpx.AsyncClient,
) -> None:
    tokens = await register(loopback)
    await loopback.post("/auth/login", json={"email": "ada@example.com", "password": "nope nope"})
    first = await loopback.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    await loopback.post(
        "/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )

    response = await loopback.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'keyturn_http_requests_total{method="POST",route="/auth/register",status="201"} 1.0' in text
    )
    assert 'keyturn_logins_total{result="invalid_credentials"} 1.0' in text
    assert 'keyturn_refreshes_total{result="rotated"} 1.0' in text
    assert 'keyturn_sessions_revoked_total{reason="logout"} 1.0' in text
    assert "keyturn_active_sessions 0.0" in text
    assert "keyturn_password_hash_queue_depth" in text
    assert "keyturn_http_request_duration_seconds_bucket" in text
    assert PASSWORD not in text
    assert tokens["refresh_token"] not in text


async def test_metrics_are_hidden_from_remote_clients_by_default(keyturn: Keyturn) -> None:
    async with await _client(keyturn, "198.51.100.4") as remote:
        response = await remote.get("/metrics")
        assert response.status_code == 404
        # A forged X-Forwarded-For does not make a remote client local.
        forged = await remote.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
        assert forged.status_code == 404


@pytest.mark.parametrize(("mode", "status"), [("public", 200), ("off", 404)])
async def test_metrics_mode_public_and_off(
    settings: Settings, clock: FakeClock, mode: str, status: int
) -> None:
    keyturn = Keyturn(settings.with_overrides(metrics=mode), clock=clock)
    await keyturn.start(background=False)
    try:
        async with await _client(keyturn, "198.51.100.4") as remote:
            assert (await remote.get("/metrics")).status_code == status
    finally:
        await keyturn.stop()


def test_request_latency_buckets_are_cumulative_with_inclusive_bounds() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.001, 0.003, 7.0):
        metrics.observe_request("GET", "/me", 200, seconds)
    text = metrics.render().decode()

    def bucket(le: str) -> str:
        return f'keyturn_http_request_duration_seconds_bucket{{le="{le}",route="/me"}}'

    assert f"{bucket('0.001')} 2.0" in text  # a request of exactly 1 ms is within le=0.001
    assert f"{bucket('0.005')} 3.0" in text
    assert f"{bucket('5.0')} 3.0" in text
    assert f"{bucket('+Inf')} 4.0" in text
    assert 'keyturn_http_request_duration_seconds_count{route="/me"} 4.0' in text
    assert 'keyturn_http_requests_total{method="GET",route="/me",status="200"} 4.0' in text
