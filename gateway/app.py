"""`create_app(settings)`: the one place where the gateway is assembled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from gateway.auth.callers import build_authenticator
from gateway.callbacks import routes as callbacks
from gateway.callbacks.delivery import DeliveryPolicy, DeliveryWorker
from gateway.callbacks.new_exams import OrthancChangeFollower
from gateway.dicom.part10 import configure_pydicom
from gateway.dicom.uid import UidGenerator
from gateway.edge.middleware import RequestContextMiddleware
from gateway.errors import EXCEPTION_HANDLERS
from gateway.exams import routes as exams
from gateway.exams.links import ExamLinks
from gateway.exams.uploads import ExamUploads
from gateway.ops import docs_page, health
from gateway.ops import openapi as docs
from gateway.ops import uid as uids
from gateway.ops.logs import configure_logging
from gateway.ops.metrics import Metrics
from gateway.settings import AuthMode, Settings
from gateway.store.db import create_engine, migrate
from gateway.store.events import EventStore
from gateway.upstream.client import UpstreamClient
from gateway.upstream.profiles import profile_for
from gateway.viewer.dicomweb import DicomWeb
from gateway.viewer.routes import routes as viewer_routes
from gateway.viewer.token_issuer import ViewerTokenIssuer
from gateway.viewer.tokens import ViewerTokens
from gateway.worklist import routes as workitems

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
    engine = create_engine(settings.database_url)
    store = EventStore(engine)
    subscribers = settings.subscribers
    secret = settings.callback_signing_secret
    worker = DeliveryWorker(store, subscribers, DeliveryPolicy(
        timeout_s=settings.callback_timeout_s, max_attempts=settings.callback_max_attempts,
        backoff_base_s=settings.callback_backoff_base_s, max_backoff_s=settings.callback_max_backoff_s,
        lease_s=settings.callback_lease_s, poll_s=settings.callback_poll_s, concurrency=settings.callback_concurrency,
        signing_secret=secret.get_secret_value().encode() if secret else None,
    ))
    token = settings.callback_auth_token
    hooks = callbacks.Callbacks(store, worker, subscribers, authenticator, token.get_secret_value() if token else None)
    follower = (OrthancChangeFollower(upstream, store, subscribers, settings.new_exam_poll_s, worker.wake)
                if settings.new_exam_detection == "orthanc-changes" else None)
    viewer_secret = settings.viewer_token_secret
    tokens = ViewerTokens(viewer_secret.get_secret_value() if viewer_secret else None, settings.viewer_token_key,
                          settings.viewer_token_ttl_s)
    exam_queries = exams.Exams(upstream, links)
    external_auth = settings.viewer_authorization_token
    issuer = ViewerTokenIssuer(
        tokens=tokens, exams=exam_queries,
        external_endpoint=str(settings.viewer_get_token_endpoint) if settings.viewer_get_token_endpoint else None,
        external_auth=external_auth.get_secret_value() if external_auth else None)
    viewer = DicomWeb(upstream=upstream, exams=exam_queries, authenticator=authenticator, tokens=tokens,
                      uploads=uploads, public_base_url=str(settings.public_base_url),
                      max_upload_bytes=settings.exams_max_upload_bytes, max_files=settings.exams_max_files,
                      trusted_proxies=frozenset(settings.trusted_proxy_list))
    routes: list[BaseRoute] = [
        *health.routes(upstream, metrics),
        *exams.routes(exam_queries, authenticator, uploads),
        *uids.routes(UidGenerator(settings.dicom_uid_root), authenticator),
        *workitems.routes(upstream, authenticator, UidGenerator(settings.dicom_uid_root), settings),
        *callbacks.routes(hooks, authenticator),
        *viewer_routes(viewer, issuer, authenticator),
        *docs.routes(),
        *docs_page.routes(),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.auth_mode is AuthMode.NONE:
            log.warning("auth_disabled", message="AUTH_MODE=none: every caller is a clinician; development only")
        log.info("gateway_started", upstream=profile.name.value, auth_mode=settings.auth_mode.value)
        await migrate(engine)  # the schema is current before the first request (Alembic; idempotent)
        async with upstream:
            await worker.start()
            if follower is not None:
                await follower.start()
            try:
                yield
            finally:
                # Stop producing, then deliver or release what is in flight, then close (SIGTERM ends up here).
                if follower is not None:
                    await follower.stop()
                await worker.stop()
                await engine.dispose()
                await authenticator.aclose()
                log.info("gateway_stopped")

    # Middleware, outermost first. Starlette adds ServerErrorMiddleware outside these and ExceptionMiddleware
    # inside, so the request middleware sees every answer, including the JSON errors, and times all of it.
    middleware = [Middleware(RequestContextMiddleware, routes=routes, metrics=metrics)]
    if settings.cors_origins:  # browser viewers on other origins (OHIF): preflights answered, tokens allowed
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "X-Request-ID"],
            expose_headers=["Content-Location", "Content-Length", "X-Request-ID"], max_age=600,
        ))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.upstream = upstream  # for tests that drive the real client through the real app
    app.state.events = store
    return app
