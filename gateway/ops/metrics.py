"""Prometheus metrics, one registry per app (no process-global collectors: two apps in one test process stay apart)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = structlog.get_logger(__name__)

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
        # New-exam detection from a PACS change feed (NEW_EXAM_DETECTION).
        self.feed_announced = Counter(
            "gateway_new_exams_announced_total", "Studies announced from a PACS change feed.", ("feed",),
            registry=self.registry,
        )
        self.feed_lag = Gauge(
            "gateway_new_exam_feed_lag", "Changes in the PACS's feed not yet read: its newest sequence number minus "
            "the position the gateway has processed.", ("feed",), registry=self.registry,
        )
        self.feed_last_poll = Gauge(
            "gateway_new_exam_feed_last_poll_timestamp_seconds", "Unix time of the last successful poll of the feed.",
            ("feed",), registry=self.registry,
        )
        self.deliveries = Gauge(
            "gateway_callback_deliveries", "Callback deliveries in the store, by state (read at each scrape).",
            ("state",), registry=self.registry,
        )
        self._on_scrape: list[Callable[[], Awaitable[None]]] = []
        # The labelled children, looked up once per label set (`labels()` takes a lock and builds a key per call).
        # The sets are bounded: route templates, the methods llhttp parses, statuses, operations.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._upstream_children: dict[tuple[str, int], Histogram] = {}

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run `refresh` before each scrape (gauges read from the store)."""
        self._on_scrape.append(refresh)

    async def scrape(self) -> bytes:
        """The metrics, after the refreshes: one that fails leaves its gauges as they were (and is logged)."""
        for refresh in self._on_scrape:
            try:
                await refresh()
            except Exception as exc:  # noqa: BLE001 - a scrape never fails for one gauge
                log.warning("metrics_refresh_failed", error=type(exc).__name__)
        return self.render()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, method, status))
        if children is None:
            labels = (route, method, str(status))
            children = self._request_children[route, method, status] = (
                self.requests.labels(*labels), self.request_seconds.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def observe_upstream(self, operation: str, status: int, seconds: float) -> None:
        child = self._upstream_children.get((operation, status))
        if child is None:
            child = self._upstream_children[operation, status] = self.upstream_seconds.labels(operation, str(status))
        child.observe(seconds)

    def count_upstream_error(self, operation: str, kind: str) -> None:
        self.upstream_errors.labels(operation, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
