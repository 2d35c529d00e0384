"""Schemathesis against keyturn's own OpenAPI document, on SQLite and PostgreSQL.

Every operation gets generated requests, valid and invalid, sent as an administrator (so the
protected routes are reached, not just their 401s). Every response must be no 5xx, carry a
documented status and content type, and match the declared schema; invalid input must be refused.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyturn import Keyturn, Settings
from keyturn.web.app import create_app
from tests.actions import PASSWORD

MAX_EXAMPLES = 25  # per operation and backend: about 600 requests, a few seconds
ADMIN_EMAIL = "root@example.com"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# These end the session they are sent with; each gets a throwaway user's.
SESSION_ENDING = {"POST /auth/logout", "DELETE /me"}


async def create_admin(settings: Settings) -> None:
    keyturn = Keyturn(settings)
    await keyturn.start(background=False)
    try:
        await keyturn.accounts.create_user(ADMIN_EMAIL, PASSWORD, is_admin=True)
    finally:
        await keyturn.stop()


def bearer_for(app: FastAPI, path: str, body: dict[str, str]) -> dict[str, str]:
    with asgi.get_client(cast(asgi.ASGIApp, app)) as client:
        response = client.post(f"http://{asgi.HOST}{path}", json=body)
    assert response.status_code in (200, 201), response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def fuzz(operation: Any, headers: dict[str, str]) -> None:
    """Generated requests for one operation; raises Schemathesis' `FailureGroup` at the first
    response that breaks a check (no shrinking: the report shows the request as sent)."""
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    conforms()


def test_every_operation_conforms_to_the_openapi_document(settings: Settings) -> None:
    asyncio.run(create_admin(settings))
    # Not started here: the app's lifespan starts it inside Schemathesis' own event loop.
    app = create_app(Keyturn(settings))
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        admin = bearer_for(app, "/auth/login", {"email": ADMIN_EMAIL, "password": PASSWORD})
        throwaway = bearer_for(
            app, "/auth/register", {"email": "throwaway@example.com", "password": PASSWORD}
        )
        failures: dict[str, str] = {}
        operations = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # keyturn's own document does not load: that is a failure
            operations.append(result.ok())
        assert len(operations) >= 20
        for operation in operations:
            headers = throwaway if operation.label in SESSION_ENDING else admin
            try:
                fuzz(operation, headers)
            except FailureGroup as failure:
                failures[operation.label] = str(failure)
        assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
        # The administrator's session lived through it all, so every operation was reached.
        with asgi.get_client(cast(asgi.ASGIApp, app)) as client:
            still = client.get(f"http://{asgi.HOST}/admin/users", headers=admin)
        assert still.status_code == 200, still.text
    finally:
        asgi.shutdown_lifespans()
