"""Request middleware: request id, one structured access line per request, and request metrics.

A plain ASGI class (not `BaseHTTPMiddleware`) so that streamed bodies pass through untouched and the context
variables it sets are seen by the endpoint, which runs in the same task.
"""

from __future__ import annotations

import re
import secrets
import time

import structlog
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.edge.context import RequestContext, current_request, enter_request, leave_request
from gateway.ops.metrics import Metrics

log = structlog.get_logger("gateway.access")

# A caller's X-Request-ID is kept only when it is short and plain, so it cannot forge log lines or blow up labels.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    """The path template of the route that handles `scope` (never the raw path: bounded metric labels, no UIDs)."""
    partial = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        template = _template(route, {**scope, **child})
        if match is Match.FULL:
            return template
        if partial is None:
            partial = template
    return partial or UNMATCHED_ROUTE


def request_route(routes: list[BaseRoute], scope: Scope) -> str:
    """`route_template` of the current request, looked up once and kept in its context (the access line, the
    metrics and the audit record all name it)."""
    context = current_request()
    if context is None:
        return route_template(routes, scope)
    if context.route is None:
        context.route = route_template(routes, scope)
    return context.route


def _template(route: BaseRoute, scope: Scope) -> str:
    """A route's path; through a Mount, the Mount's path and then the template of the inner route that takes the
    rest (`/dicomweb` + `/studies/{study}`); for a Route whose endpoint is itself a route (a Mount), the inner one's."""
    path = str(getattr(route, "path", UNMATCHED_ROUTE))
    if isinstance(route, Mount):
        inner = route_template(route.routes, scope)
        return path + inner if inner != UNMATCHED_ROUTE else path
    app = getattr(route, "app", None)
    if isinstance(app, BaseRoute):
        inner = route_template([app], scope)
        return inner if inner != UNMATCHED_ROUTE else path
    return path


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, routes: list[BaseRoute], metrics: Metrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Routing updates the scope (a Mount moves root_path): the template is looked up in the scope as it came.
        arrived = dict(scope)
        request_id = _incoming_request_id(scope) or secrets.token_hex(16)  # uuid4().hex's form, without the UUID
        context = RequestContext(request_id=request_id)
        token = enter_request(context)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = request_route(self.routes, arrived)
            self.metrics.observe_request(route, scope["method"], status, elapsed)
            # Route template and status only: the path and query can hold patient IDs (PHI), so they stay out.
            log.info(
                "request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                upstream_ms=round(context.upstream_seconds * 1000, 2),
                upstream_calls=context.upstream_calls,
                **context.facts,
            )
            log.debug("request_target", path=scope["path"], query=scope.get("query_string", b"").decode("latin-1"))
            leave_request(token)


def _incoming_request_id(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _REQUEST_ID_RE.fullmatch(candidate) else None
    return None
