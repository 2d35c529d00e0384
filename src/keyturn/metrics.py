"""Prometheus metrics: a registry per `Keyturn`, so several instances in one process never clash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter(
            "keyturn_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "keyturn_http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.logins = Counter("keyturn_logins", "Login attempts by result", ["result"], registry=r)
        self.refreshes = Counter(
            "keyturn_refreshes", "Refresh attempts by result", ["result"], registry=r
        )
        self.reuse_detected = Counter(
            "keyturn_refresh_token_reuse_detected",
            "Refresh tokens presented again after rotation",
            registry=r,
        )
        self.revocations = Counter(
            "keyturn_sessions_revoked", "Sessions revoked by reason", ["reason"], registry=r
        )
        self.cleanup_runs = Counter("keyturn_cleanup_runs", "Cleanup runs", registry=r)
        self.cleanup_removed = Counter(
            "keyturn_cleanup_removed", "Rows removed by cleanup", ["kind"], registry=r
        )
        self.active_sessions = Gauge(
            "keyturn_active_sessions", "Live sessions (as of the last scrape)", registry=r
        )
        self.hash_queue = Gauge(
            "keyturn_password_hash_queue_depth", "argon2 hashes queued or running", registry=r
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Per request: label children are looked up once per (method, route, status)."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_hash_queue(self, depth: Callable[[], int]) -> None:
        self.hash_queue.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
