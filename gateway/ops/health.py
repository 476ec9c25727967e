"""Liveness, readiness and metrics for the platform (Kubernetes probes, Prometheus). No token needed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import error_response
from gateway.ops.metrics import Metrics
from gateway.upstream.client import UpstreamClient


def routes(upstream: UpstreamClient, metrics: Metrics) -> list[Route]:
    async def healthz(request: Request) -> Response:
        """Alive: the process serves requests. Never looks upstream, so a PACS outage does not restart pods."""
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        """Ready: the upstream PACS answers a DICOMweb search right now (checked on every call, no cache)."""
        reason = await upstream.readiness()
        if reason is not None:
            return error_response(503, "not_ready", "the upstream PACS is not answering", {"reason": reason})
        return JSONResponse({"status": "ready", "upstream": upstream.profile.name.value})

    async def metrics_text(request: Request) -> Response:
        return Response(await metrics.scrape(), media_type=metrics.content_type)

    return [
        Route("/-/healthz", healthz, methods=["GET"]),
        Route("/-/ready", ready, methods=["GET"]),
        Route("/-/metrics", metrics_text, methods=["GET"]),
    ]
