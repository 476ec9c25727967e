"""`create_app(settings)`: the gateway's routes and middleware, in order, around the components built from settings.

Reading order for a newcomer: `components.build` (settings in, objects out), this module (what answers which path,
and what every request passes through), `lifespan` (what opens and closes around the requests).
"""

from __future__ import annotations

from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from gateway import components
from gateway.audit import routes as audit
from gateway.audit.recorder import AuditMiddleware
from gateway.callbacks import routes as callbacks
from gateway.dicom.part10 import configure_pydicom
from gateway.edge.context import current_request
from gateway.edge.middleware import RequestContextMiddleware, request_route
from gateway.errors import EXCEPTION_HANDLERS
from gateway.exams import routes as exams
from gateway.lifespan import lifespan
from gateway.ops import docs_page, health
from gateway.ops import openapi as docs
from gateway.ops import uid as uids
from gateway.ops.logs import configure_logging
from gateway.settings import Settings
from gateway.viewer import routes as viewer
from gateway.worklist import routes as workitems


def create_app(settings: Settings) -> Starlette:
    configure_logging(settings.log_level, settings.log_format)
    configure_pydicom()
    parts = components.build(settings)
    auth = parts.authenticator
    routes: list[BaseRoute] = [
        *health.routes(parts.upstream, parts.metrics),
        *exams.routes(parts.exams, auth, parts.uploads),
        *uids.routes(parts.uids, auth),
        *workitems.routes(parts.worklist, auth),
        *callbacks.routes(parts.callbacks, auth),
        *viewer.routes(parts.viewer, parts.issuer, auth),
        *audit.routes(parts.audit_events, auth),
        *docs.routes(),
        *docs_page.routes(),
    ]
    # Middleware, outermost first. Starlette adds ServerErrorMiddleware outside these and ExceptionMiddleware
    # inside, so the request middleware sees every answer, including the JSON errors, and times all of it.
    middleware = [Middleware(RequestContextMiddleware, routes=routes, metrics=parts.metrics)]
    if parts.trail is not None:  # inside the request context (its request id), outside everything that answers
        middleware.append(Middleware(
            AuditMiddleware, journal=parts.trail.journal, classify=parts.trail.classifier,
            route_of=partial(request_route, routes), request_id_of=_request_id,
            trusted_proxies=frozenset(settings.trusted_proxy_list),
        ))
    if settings.cors_origins:  # browser viewers on other origins (OHIF): preflights answered, tokens allowed
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "X-Request-ID"],
            expose_headers=["Content-Location", "Content-Length", "X-Request-ID"], max_age=600,
        ))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS,
                    lifespan=lifespan(parts, auth_mode=settings.auth_mode))
    app.state.upstream = parts.upstream  # for tests that drive the real client through the real app
    app.state.events = parts.store
    return app


def _request_id() -> str:
    context = current_request()
    return context.request_id if context is not None else ""
