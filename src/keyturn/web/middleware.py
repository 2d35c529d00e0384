"""One plain ASGI middleware: request id, client address, body limit, headers, access log."""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import time
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyturn.config import IPNetwork
from keyturn.logs import log_access
from keyturn.metrics import Metrics
from keyturn.web.problems import problem

MAX_BODY_BYTES = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")

# Request ids: a random prefix per process and a counter. Unique across instances and
# restarts, as a log search needs; not secret, so not worth a getrandom system call each.
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter):016x}"


def _reseed_request_ids() -> None:  # a forked worker must not repeat its parent's ids
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_request_ids)


def client_ip(scope: Scope, trusted: Sequence[IPNetwork]) -> str | None:
    """The socket peer, unless it is a trusted proxy: then the nearest untrusted forwarded hop."""
    peer = scope.get("client")
    address: str | None = peer[0] if peer else None
    if address is None or not trusted or not _is_trusted(address, trusted):
        return address
    forwarded = _header(scope, b"x-forwarded-for")
    if not forwarded:
        return address
    # Right to left: each trusted hop appended what it saw; the first untrusted is the client.
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address
        if not _is_trusted(hop, trusted):
            return str(hop)
        address = hop
    return address


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class KeyturnMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Sequence[IPNetwork] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ip = client_ip(scope, self.trusted)
        request_id = self._request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_ip"] = ip
        status_holder = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                headers = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("ascii")),
                    _NOSNIFF,
                ]
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    # Tokens and user data must never sit in a shared or browser cache.
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                buffered = await self._read_limited(scope, receive)
                if buffered is None:
                    response = problem(
                        413,
                        "request_too_large",
                        "Request body too large",
                        f"The request body must not exceed {MAX_BODY_BYTES} bytes.",
                        request_id=request_id,
                    )
                    await response(scope, receive, send_wrapper)
                    return
                receive = _replay(buffered, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            self._observe(scope, status_holder[0], elapsed)
            self._log(scope, ip, request_id, status_holder[0], elapsed)

    def _request_id(self, scope: Scope) -> str:
        peer = scope.get("client")
        if peer and self.trusted and _is_trusted(peer[0], self.trusted):
            incoming = _header(scope, b"x-request-id")
            if incoming and _REQUEST_ID.match(incoming):
                return incoming
        return _new_request_id()

    async def _read_limited(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it is known to be too large (never read further)."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        if self.metrics is None:
            return
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe_request(scope["method"], route, status, elapsed)

    def _log(
        self, scope: Scope, ip: str | None, request_id: str, status: int, elapsed: float
    ) -> None:
        log_access(
            request_id=request_id,
            method=scope["method"],
            path=scope.get("path", ""),  # never the query string
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            client_ip=ip,
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
