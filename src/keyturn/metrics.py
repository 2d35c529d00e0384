"""Prometheus metrics: a registry per `Keyturn`, so several instances in one process never clash."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BOUNDS = (*(repr(bound) for bound in _LATENCY_BUCKETS), "+Inf")  # the `le` labels


class _RequestStats(Collector):
    """Request counts and latencies per route, on every request.

    prometheus_client's Counter and Histogram take a lock and walk the buckets on every call
    (about 10 µs for the pair, a twentieth of a GET /me); these are plain dict and list updates
    (the event loop's thread is the only writer, and it also serves the scrape), turned into
    metric families only when /metrics is read.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], int] = {}
        self._buckets: dict[str, list[int]] = {}  # per route: counts per bucket, then +Inf
        self._sums: dict[str, float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        buckets = self._buckets.get(route)
        if buckets is None:
            buckets = self._buckets[route] = [0] * (len(_LATENCY_BUCKETS) + 1)
            self._sums[route] = 0.0
        buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # `le` bounds are inclusive
        self._sums[route] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "keyturn_http_requests",
            "HTTP requests by route and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in list(self._counts.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "keyturn_http_request_duration_seconds", "Request latency by route", labels=["route"]
        )
        for route, counts in list(self._buckets.items()):
            cumulative = list(accumulate(counts))
            latency.add_metric(
                [route],
                buckets=list(zip(_BOUNDS, cumulative, strict=True)),
                sum_value=self._sums[route],
            )
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http = _RequestStats()
        r.register(self.http)
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
        self.http.observe(method, route, status, seconds)

    def watch_hash_queue(self, depth: Callable[[], int]) -> None:
        self.hash_queue.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
