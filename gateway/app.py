"""`create_app(settings)`: the one place where the gateway is assembled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from gateway import docs, exams, health, uids, workitems
from gateway.auth import build_authenticator
from gateway.dicom import UidGenerator
from gateway.errors import EXCEPTION_HANDLERS
from gateway.links import ExamLinks
from gateway.logs import configure_logging
from gateway.metrics import Metrics
from gateway.middleware import RequestContextMiddleware
from gateway.part10 import configure_pydicom
from gateway.profiles import profile_for
from gateway.settings import AuthMode, Settings
from gateway.uploads import ExamUploads
from gateway.upstream import UpstreamClient

log = structlog.get_logger(__name__)


def create_app(settings: Settings) -> Starlette:
    configure_logging(settings.log_level, settings.log_format)
    configure_pydicom()
    metrics = Metrics()
    profile = profile_for(settings.pacs_profile)
    # Long-lived objects are built here and opened/closed by the lifespan; routes receive them as arguments.
    upstream = UpstreamClient(settings, profile, metrics)
    authenticator = build_authenticator(settings)

    links = ExamLinks(str(settings.public_base_url))
    uploads = ExamUploads(upstream, links, settings.exams_max_upload_bytes, settings.exams_max_files)
    routes: list[BaseRoute] = [
        *health.routes(upstream, metrics),
        *exams.routes(upstream, authenticator, uploads, links),
        *uids.routes(UidGenerator(settings.dicom_uid_root), authenticator),
        *workitems.routes(upstream, authenticator, UidGenerator(settings.dicom_uid_root), settings),
        *docs.routes(),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.auth_mode is AuthMode.NONE:
            log.warning("auth_disabled", message="AUTH_MODE=none: every caller is a clinician; development only")
        log.info("gateway_started", upstream=profile.name.value, auth_mode=settings.auth_mode.value)
        async with upstream:
            try:
                yield
            finally:
                await authenticator.aclose()
                log.info("gateway_stopped")

    # Middleware, outermost first. Starlette adds ServerErrorMiddleware outside these and ExceptionMiddleware
    # inside, so the request middleware sees every answer, including the JSON errors, and times all of it.
    middleware = [Middleware(RequestContextMiddleware, routes=routes, metrics=metrics)]

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.upstream = upstream  # for tests that drive the real client through the real app
    return app
