"""Production shape: nginx round-robins two `keyturn serve` processes on one PostgreSQL and Redis.

Everything is real: the Debian nginx running deploy/nginx/keyturn.conf.template, two server
processes, one PostgreSQL database, one Redis. Clients connect from addresses of their own in
127.0.0.0/8 (Linux routes all of it to the loopback interface) so that the only trusted proxy,
nginx at 127.0.0.1, can be told apart from them.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis

from tests.actions import bearer, login, register
from tests.databases import postgres_admin_url, temporary_database
from tests.nginx_process import TEMPLATE, install_nginx, running_nginx
from tests.server_process import KEYTURN, free_port, running_server, server_env

pytestmark = [pytest.mark.server, pytest.mark.asyncio(loop_scope="module")]

PROXY = "127.0.0.1"  # nginx as the instances see it: the one KEYTURN_TRUSTED_PROXIES entry
SPOOFED = "6.6.6.6"  # what a client writes into X-Forwarded-For, hoping to be believed
FORGED = {"X-Forwarded-For": SPOOFED}
RATE_LIMIT = 20  # per minute, per client address and endpoint, counted in Redis
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"


def redis_url() -> str:
    configured = os.environ.get("KEYTURN_TEST_REDIS_URL")
    url = configured or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        if configured:
            pytest.fail(f"KEYTURN_TEST_REDIS_URL={url} does not answer: {error}")
        pytest.skip(f"no Redis at {url} (set KEYTURN_TEST_REDIS_URL): {error}")
    return url


@dataclass
class Deployment:
    proxy: str
    ports: tuple[int, int]
    directory: Path
    access_log: Path
    env: dict[str, str]
    _running: dict[int, ExitStack] = field(default_factory=dict)

    @property
    def instances(self) -> tuple[str, str]:
        return (f"http://127.0.0.1:{self.ports[0]}", f"http://127.0.0.1:{self.ports[1]}")

    def start(self, port: int) -> None:
        stack = ExitStack()
        stack.enter_context(running_server(self.env, port=port, cwd=self.directory))
        self._running[port] = stack

    def stop(self, port: int) -> None:
        """SIGTERM, and wait for the process to finish its requests and exit."""
        self._running.pop(port).close()

    def stop_all(self) -> None:
        for port in list(self._running):
            self.stop(port)


def distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="session")
def nginx() -> str:
    return install_nginx()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    if not postgres_admin_url():
        pytest.skip("KEYTURN_TEST_POSTGRES_URL is not set: instances can share only PostgreSQL")
    nginx: str = request.getfixturevalue("nginx")  # installed only when it will be used
    directory = tmp_path_factory.mktemp("deployment")
    proxy_port, *instance_ports = distinct_ports(3)
    proxy = f"http://127.0.0.1:{proxy_port}"
    async with temporary_database("postgresql", directory) as database_url:
        env = server_env(
            database_url,
            KEYTURN_REDIS_URL=redis_url(),
            KEYTURN_TRUSTED_PROXIES=PROXY,
            # One issuer for every instance: each checks `iss` on tokens the other signed.
            KEYTURN_ISSUER=proxy,
            KEYTURN_RATE_LIMIT=f"{RATE_LIMIT}/minute",
        )
        # As in a rolling deploy: migrate first, then start instances on the current schema.
        migrate = await asyncio.create_subprocess_exec(KEYTURN, "migrate", env=env)
        assert await migrate.wait() == 0
        found = Deployment(
            proxy, (instance_ports[0], instance_ports[1]), directory, directory / "access.log", env
        )
        try:
            # Both at once: their start-up (migration check, signing key) meets in the database.
            await asyncio.gather(*(asyncio.to_thread(found.start, port) for port in found.ports))
            with running_nginx(
                nginx,
                directory / "nginx",
                port=proxy_port,
                instances=[f"127.0.0.1:{port}" for port in found.ports],
                access_log=found.access_log,
            ):
                yield found
        finally:
            found.stop_all()


def client_address() -> str:
    """A loopback address of a client's own, never a trusted proxy's."""
    return f"127.{random.randint(100, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


@asynccontextmanager
async def http(
    base: str, source: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connections come from `source`."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(
        transport=transport, base_url=base, headers=headers, timeout=10
    ) as client:
        yield client


def new_email() -> str:
    # Unique per run: Redis keeps failure counts per email across runs for the window.
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> dict[str, Any]:
    response = await client.post("/auth/refresh", json={"refresh_token": refresh_token})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_line(path: Path, needle: str) -> str:
    """The first line of a log holding `needle`; logs are written just after the response."""
    for _ in range(100):
        for line in read_lines(path):
            if needle in line:
                return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {path}")


_ACCESS = re.compile(
    r'^(?P<client>\S+) \[\S+\] "\S+ (?P<uri>\S+)" \d+ '
    r"request_id=(?P<id>\w+) upstream=(?P<upstream>.*?) upstream_status="
)


def proxied(deployment: Deployment, client: str) -> Iterator[re.Match[str]]:
    """nginx's access log lines for the requests one client made."""
    for line in read_lines(deployment.access_log):
        match = _ACCESS.match(line)
        if match and match["client"] == client:
            yield match


async def test_the_guide_shows_the_nginx_configuration_this_module_runs() -> None:
    shown, run = await asyncio.gather(
        asyncio.to_thread(GUIDE.read_text), asyncio.to_thread(TEMPLATE.read_text)
    )
    assert f"```nginx\n{run}```" in shown, "docs/deployment.md must show the template verbatim"


async def test_the_contract_flow_runs_through_nginx(deployment: Deployment) -> None:
    email, source = new_email(), client_address()
    async with http(deployment.proxy, source) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["redis"] is True

        registered = await register(client, email=email)
        wrong = await client.post("/auth/login", json={"email": email, "password": "wrong horse"})
        assert wrong.status_code == 401
        assert wrong.json()["code"] == "invalid_credentials"
        tokens = await login(client, email=email)
        me = await client.get("/me", headers=bearer(tokens))
        assert me.status_code == 200
        assert me.json()["id"] == registered["user"]["id"]

        refreshed = await refresh(client, tokens["refresh_token"])
        assert refreshed["session_id"] == tokens["session_id"]
        assert refreshed["refresh_token"] != tokens["refresh_token"]
        # A retry inside KEYTURN_REFRESH_REUSE_GRACE, which round robin hands to the other
        # instance, gets the same successor.
        retried = await refresh(client, tokens["refresh_token"])
        assert retried["refresh_token"] == refreshed["refresh_token"]

        listed = await client.get("/me/sessions", headers=bearer(refreshed))
        sessions = listed.json()["sessions"]
        assert {s["id"] for s in sessions} == {registered["session_id"], tokens["session_id"]}
        assert [s["id"] for s in sessions if s["current"]] == [tokens["session_id"]]

        assert (await client.post("/auth/logout", headers=bearer(refreshed))).status_code == 204
        assert (await client.get("/me", headers=bearer(refreshed))).status_code == 401
        ended = await client.post(
            "/auth/refresh", json={"refresh_token": refreshed["refresh_token"]}
        )
        assert ended.status_code == 401
        assert (await client.get("/me", headers=bearer(registered))).status_code == 200

        stolen = await login(client, email=email)
        first = await refresh(client, stolen["refresh_token"])
        second = await refresh(client, first["refresh_token"])
        reused = await client.post("/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
        assert reused.status_code == 401
        assert reused.json()["code"] == "refresh_token_reused"
        assert (await client.get("/me", headers=bearer(second))).status_code == 401

        revoked = await client.post("/auth/revoke", data={"token": registered["refresh_token"]})
        assert revoked.status_code == 200
        assert (await client.get("/me", headers=bearer(registered))).status_code == 401
        unknown = await client.post("/auth/revoke", data={"token": "x" * 43})
        assert unknown.status_code == 200

        final = await login(client, email=email)
        audit = await client.get("/me/audit", headers=bearer(final), params={"limit": 100})
        events = audit.json()["events"]
    types = {e["type"] for e in events}
    assert {
        "user.registered",
        "login.failed",
        "login.succeeded",
        "session.refreshed",
        "refresh_token.reused",
        "session.revoked",
    } <= types
    reasons = {e["detail"].get("reason") for e in events if e["type"] == "session.revoked"}
    assert reasons == {"logout", "refresh_token_reused"}
    # Round robin spread this client's requests over both instances, the retry included.
    served = list(proxied(deployment, source))
    assert {m["upstream"] for m in served} == {f"127.0.0.1:{port}" for port in deployment.ports}
    first_refreshes = [m["upstream"] for m in served if m["uri"] == "/auth/refresh"][:2]
    assert first_refreshes[0] != first_refreshes[1]


async def test_a_logout_on_one_instance_is_refused_at_once_by_the_other(
    deployment: Deployment,
) -> None:
    email, source = new_email(), client_address()
    first, second = deployment.instances
    async with http(first, source) as on_a, http(second, source) as on_b:
        jwks = [(await on.get("/.well-known/jwks.json")).json() for on in (on_a, on_b)]
        assert jwks[0] == jwks[1]
        await register(on_a, email=email)
        tokens = await login(on_a, email=email)
        # B verifies what A signed and rotates what A issued: keys and sessions are shared.
        assert (await on_b.get("/me", headers=bearer(tokens))).status_code == 200
        renewed = await refresh(on_b, tokens["refresh_token"])

        assert (await on_a.post("/auth/logout", headers=bearer(renewed))).status_code == 204
        refused = await on_b.get("/me", headers=bearer(renewed))
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        ended = await on_b.post("/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
        assert ended.status_code == 401

        # A global logout on B ends every session, A refuses them all at once too.
        here, there = await login(on_b, email=email), await login(on_a, email=email)
        global_ = await on_b.post("/auth/logout", params={"scope": "global"}, headers=bearer(here))
        assert global_.status_code == 204
        for tokens_ in (here, there):
            assert (await on_a.get("/me", headers=bearer(tokens_))).status_code == 401


async def test_sessions_and_audit_record_the_address_nginx_forwards(
    deployment: Deployment,
) -> None:
    """nginx sends `X-Forwarded-For: 6.6.6.6, <client>`; right to left, <client> is the first
    address that is not a trusted proxy, so that is recorded and the forged hop is ignored."""
    email, source = new_email(), client_address()
    async with http(deployment.proxy, source, FORGED) as client:
        await register(client, email=email)
        await login(client, email=email)
        # The forged header straight to an instance: the peer is not trusted, so not believed.
        async with http(deployment.instances[0], source, FORGED) as direct:
            tokens = await login(direct, email=email)
        sessions = await client.get("/me/sessions", headers=bearer(tokens))
        audit = await client.get("/me/audit", headers=bearer(tokens))
    assert [s["ip"] for s in sessions.json()["sessions"]] == [source] * 3
    events = audit.json()["events"]
    assert [e["type"] for e in events].count("login.succeeded") == 2
    assert {e["ip"] for e in events} == {source}
    assert SPOOFED not in sessions.text + audit.text


async def test_a_client_on_a_trusted_address_is_believed_like_a_proxy(
    deployment: Deployment,
) -> None:
    """Why KEYTURN_TRUSTED_PROXIES must list the proxies and nothing else: whatever connects from
    a trusted address (here 127.0.0.1, the host nginx runs on) may name any client address."""
    email = new_email()
    async with http(deployment.proxy, PROXY, FORGED) as client:
        tokens = await register(client, email=email)
        sessions = await client.get("/me/sessions", headers=bearer(tokens))
    assert [s["ip"] for s in sessions.json()["sessions"]] == [SPOOFED]


async def test_request_ids_pass_from_nginx_through_the_instance_and_back(
    deployment: Deployment,
) -> None:
    source = client_address()
    async with http(deployment.proxy, source, {"X-Request-ID": "chosen-by-client"}) as client:
        problem = await client.get("/me")
    async with http(deployment.instances[0], source, {"X-Request-ID": "forged"}) as direct:
        untrusted = await direct.get("/healthz")
    request_id = problem.headers["x-request-id"]
    assert problem.json()["request_id"] == request_id
    assert untrusted.headers["x-request-id"] != "forged"
    # The id nginx logged is the one the instance logged and returned, not the client's.
    line = await wait_for_line(deployment.access_log, f"request_id={request_id}")
    upstream = _ACCESS.match(line)
    assert upstream is not None
    port = upstream["upstream"].rsplit(":", 1)[1]
    await wait_for_line(deployment.directory / f"serve-{port}.log", request_id)


async def test_rate_limits_are_counted_once_for_both_instances_in_redis(
    deployment: Deployment,
) -> None:
    source = client_address()
    body = {"refresh_token": "x" * 43}
    async with http(deployment.proxy, source) as client:
        answers = [await client.post("/auth/refresh", json=body) for _ in range(RATE_LIMIT + 1)]
    # Each instance saw about half of these; only a shared count reaches the limit.
    assert [a.status_code for a in answers] == [401] * RATE_LIMIT + [429]
    assert answers[-1].json()["code"] == "rate_limited"
    assert int(answers[-1].headers["retry-after"]) > 0
    assert {m["upstream"] for m in proxied(deployment, source)} == {
        f"127.0.0.1:{port}" for port in deployment.ports
    }


async def test_nginx_hides_metrics_and_lets_keyturn_refuse_large_bodies(
    deployment: Deployment,
) -> None:
    source = client_address()
    async with http(deployment.proxy, source) as client:
        metrics = await client.get("/metrics")
        large = await client.post(
            "/auth/login",
            content=b"{" + b" " * 70_000 + b"}",
            headers={"content-type": "application/json"},
        )
    async with http(deployment.instances[0], source) as direct:
        scraped = await direct.get("/metrics")
    # Through a proxy on the same host every client is a loopback peer to KEYTURN_METRICS=local;
    # a scraper talks to each instance directly.
    assert metrics.status_code == 404
    assert scraped.status_code == 200
    assert large.status_code == 413
    assert large.headers["content-type"] == "application/problem+json"
    assert large.json()["code"] == "request_too_large"


async def test_nginx_routes_around_a_stopped_instance(deployment: Deployment) -> None:
    """A rolling restart: stop one instance; every request still succeeds. Runs last: nginx
    keeps the restarted instance out of rotation for fail_timeout (10 s)."""
    email, source = new_email(), client_address()
    stopped = deployment.ports[0]
    async with http(deployment.proxy, source) as client:
        tokens = await register(client, email=email)
        deployment.stop(stopped)
        try:
            for _ in range(3):
                assert (await client.get("/me", headers=bearer(tokens))).status_code == 200
                tokens = await refresh(client, tokens["refresh_token"])
            assert (await client.post("/auth/logout", headers=bearer(tokens))).status_code == 204
        finally:
            deployment.start(stopped)
    survivor = f"127.0.0.1:{deployment.ports[1]}"
    served = [m["upstream"] for m in proxied(deployment, source)][1:]
    assert all(upstream.endswith(survivor) for upstream in served)
    # One request met the stopped instance first ("A, B") and was passed on; nginx then left
    # the stopped instance alone.
    assert sum(", " in upstream for upstream in served) == 1
