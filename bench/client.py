"""A tiny HTTP client (stdlib only) for setting up users and tokens before wrk takes over."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any


def call(
    base_url: str,
    method: str,
    path: str,
    *,
    json_body: object | None = None,
    form: dict[str, str] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """(status, decoded JSON body or None); HTTP errors are answers here, not exceptions."""
    url = urllib.parse.urlsplit(base_url)
    headers: dict[str, str] = {}
    data: bytes | None = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    try:
        connection.request(method, path, body=data, headers=headers)
        answer = connection.getresponse()
        return answer.status, _decode(answer.read())
    finally:
        connection.close()


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def expect(status: int, body: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise RuntimeError(f"{what}: expected {wanted}, got {status}: {body!r:.500}")
    return body
