"""Prometheus metrics, one registry per app (no process-global collectors: two apps in one test process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 2.5 ms (a cached QIDO) to 60 s (a large WADO or STOW).
_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total", "Requests answered, by route template, method and status.",
            ("route", "method", "status"), registry=self.registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Time to answer a request (until the last body byte).",
            ("route", "method", "status"), buckets=_BUCKETS, registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "gateway_upstream_request_duration_seconds", "Upstream PACS latency until response headers.",
            ("operation", "status"), buckets=_BUCKETS, registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total", "Upstream failures by operation and kind (timeout, connect, ...).",
            ("operation", "kind"), registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.request_seconds.labels(*labels).observe(seconds)

    def observe_upstream(self, operation: str, status: int, seconds: float) -> None:
        self.upstream_seconds.labels(operation, str(status)).observe(seconds)

    def count_upstream_error(self, operation: str, kind: str) -> None:
        self.upstream_errors.labels(operation, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
