"""Settings in, components out: the one place where configuration becomes the gateway's long-lived objects.

Every component takes explicit typed arguments (keyword-only when it takes more than one) and never sees `Settings`:
this module is the only one that reads it, besides the CLI that loads it. `app.create_app` turns what is built here
into routes and middleware; `lifespan` opens it before the first request and closes it after the last.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.apart import ShipperConfig, ShipperProcess
from gateway.audit.classify import Classifier
from gateway.audit.journal import AuditJournal
from gateway.audit.records import Peer
from gateway.audit.retention import AuditRetention
from gateway.audit.routes import AuditEvents
from gateway.audit.shipper import ShipPolicy, SyslogRendering
from gateway.audit.trail import AuditTrail
from gateway.auth.callers import Authenticator, JwksSource, JwtAuthenticator, NoAuthentication, TokenRules
from gateway.callbacks.azure_feed import AzureChangeFeedFollower, api_version
from gateway.callbacks.delivery import DeliveryPolicy, DeliveryWorker
from gateway.callbacks.new_exams import OrthancChangeFollower
from gateway.callbacks.routes import Callbacks
from gateway.dicom.uid import UidGenerator
from gateway.edge.http import EdgeLimits
from gateway.exams.links import ExamLinks
from gateway.exams.routes import Exams
from gateway.exams.uploads import ExamUploads
from gateway.ops.metrics import Metrics
from gateway.settings import AuthMode, Settings
from gateway.store.audit import AuditStore
from gateway.store.db import create_engine
from gateway.store.events import EventStore
from gateway.upstream.auth import OAuth2ClientCredentials, StaticAuthorization, UpstreamAuth
from gateway.upstream.client import UpstreamClient, UpstreamLimits
from gateway.upstream.profiles import UpstreamProfile, profile_for
from gateway.viewer.dicomweb import DicomWeb
from gateway.viewer.token_issuer import ViewerTokenIssuer
from gateway.viewer.tokens import ViewerTokens
from gateway.worklist.routes import Worklist


@dataclass(frozen=True, slots=True)
class Components:
    """The gateway's long-lived objects. Routes get the ones they need as arguments; nothing is global."""

    profile: UpstreamProfile
    metrics: Metrics
    upstream: UpstreamClient
    authenticator: Authenticator
    uids: UidGenerator
    engine: AsyncEngine
    store: EventStore
    audit: AuditStore  # the audit trail, on the events' engine
    audit_events: AuditEvents
    trail: AuditTrail | None  # AUDIT_TRAIL=on: every audited request recorded before it is answered
    worker: DeliveryWorker
    follower: OrthancChangeFollower | AzureChangeFeedFollower | None  # NEW_EXAM_DETECTION
    callbacks: Callbacks
    exams: Exams
    uploads: ExamUploads
    worklist: Worklist
    viewer: DicomWeb
    issuer: ViewerTokenIssuer


def build(settings: Settings) -> Components:
    metrics = Metrics()
    upstream = upstream_client(settings, metrics)
    authenticator = _authenticator(settings)
    engine = create_engine(settings.database_url)
    store = EventStore(engine)
    audit = AuditStore(engine, inline=settings.audit_durability == "process")
    worker = DeliveryWorker(store=store, subscribers=settings.subscribers, policy=_delivery_policy(settings))
    follower: OrthancChangeFollower | AzureChangeFeedFollower | None = None
    if settings.new_exam_feed == "orthanc-changes":
        follower = OrthancChangeFollower(upstream=upstream, store=store, subscribers=settings.subscribers,
                                         poll_s=settings.new_exam_poll_s, on_events=worker.wake, metrics=metrics)
    elif settings.new_exam_feed == "azure-changefeed":
        follower = AzureChangeFeedFollower(
            upstream=upstream, store=store, subscribers=settings.subscribers, poll_s=settings.new_exam_poll_s,
            quiet_s=settings.new_exam_quiet_s, version=api_version(str(settings.pacs_service_url)),
            on_events=worker.wake, metrics=metrics)

    async def count_deliveries() -> None:
        for state, count in (await store.counts()).items():
            metrics.deliveries.labels(state).set(count)

    metrics.on_scrape(count_deliveries)
    token = settings.callback_auth_token
    callbacks = Callbacks(store=store, worker=worker, subscribers=settings.subscribers, authenticator=authenticator,
                          auth_token=token.get_secret_value() if token else None)
    links = ExamLinks(public_base_url=str(settings.public_base_url))
    exams = Exams(upstream=upstream, links=links)
    uploads = ExamUploads(upstream=upstream, links=links, max_bytes=settings.exams_max_upload_bytes,
                          max_files=settings.exams_max_files)
    uids = UidGenerator(settings.dicom_uid_root)
    worklist = Worklist(upstream=upstream, uids=uids, priority=settings.worklist_priority,
                        input_readiness=settings.worklist_input_readiness, label=settings.worklist_label,
                        requester_aet=settings.pacs_requester_aet)
    viewer_secret = settings.viewer_token_secret
    tokens = ViewerTokens(secret=viewer_secret.get_secret_value() if viewer_secret else None,
                          key_pem=settings.viewer_token_key, ttl_s=settings.viewer_token_ttl_s)
    external, external_auth = settings.viewer_get_token_endpoint, settings.viewer_authorization_token
    issuer = ViewerTokenIssuer(tokens=tokens, exams=exams, external_endpoint=str(external) if external else None,
                               external_auth=external_auth.get_secret_value() if external_auth else None)
    viewer = DicomWeb(upstream=upstream, exams=exams, authenticator=authenticator, tokens=tokens, uploads=uploads,
                      public_base_url=str(settings.public_base_url), max_upload_bytes=settings.exams_max_upload_bytes,
                      max_files=settings.exams_max_files, trusted_proxies=frozenset(settings.trusted_proxy_list))
    return Components(
        profile=upstream.profile, metrics=metrics, upstream=upstream, authenticator=authenticator,
        uids=uids, engine=engine, store=store, audit=audit, audit_events=AuditEvents(audit),
        trail=audit_trail(settings, audit) if settings.audit_trail == "on" else None, worker=worker,
        follower=follower, callbacks=callbacks, exams=exams, uploads=uploads, worklist=worklist, viewer=viewer,
        issuer=issuer,
    )


def upstream_client(settings: Settings, metrics: Metrics) -> UpstreamClient:
    """The PACS client the settings describe (also used by tests that drive it without an app)."""
    native = settings.pacs_native_url
    limits = UpstreamLimits(
        connect_s=settings.pacs_connect_timeout_s, read_s=settings.pacs_read_timeout_s,
        pool_s=settings.pacs_pool_timeout_s, ready_s=settings.ready_timeout_s,
        max_connections=settings.pacs_max_connections, keepalive_s=settings.pacs_keepalive_expiry_s,
    )
    return UpstreamClient(service_url=str(settings.pacs_service_url), native_url=str(native) if native else None,
                          profile=profile_for(settings.pacs_profile), metrics=metrics, limits=limits,
                          auth=upstream_auth(settings))


def audit_trail(settings: Settings, store: AuditStore) -> AuditTrail:
    shipper = retention = None
    if settings.audit_syslog_url is not None:
        # In a process of its own (audit.apart). A lease (30 s) covers a send (10 s at most); commits gather 0.2 s
        # before the child is woken (the child itself does not wait after a wake).
        shipper = ShipperProcess(gather_s=0.2, config=ShipperConfig(
            database_url=settings.database_url, syslog_url=settings.audit_syslog_url,
            rendering=SyslogRendering(source_id=settings.audit_source_id, hostname=_syslog_hostname()),
            policy=ShipPolicy(batch=100, lease_s=30.0, poll_s=1.0, gather_s=0.0, retry_base_s=1.0,
                              retry_max_s=300.0),
            log_level=settings.log_level, log_format=settings.log_format, ca_file=settings.audit_syslog_ca_file,
            cert_file=settings.audit_syslog_cert_file, key_file=settings.audit_syslog_key_file))
    if settings.audit_retention_days is not None:
        retention = AuditRetention(store=store, days=settings.audit_retention_days)
    journal = AuditJournal(store=store, on_commit=shipper.wake if shipper is not None else None)
    return AuditTrail(journal=journal, classifier=Classifier(peer=Peer(user_id=settings.audit_source_id)),
                      shipper=shipper, retention=retention)


def _syslog_hostname() -> str:
    """This host's name as RFC 5424 HOSTNAME takes it: printable US-ASCII, at most 255, else the nil value."""
    name = socket.gethostname()
    return name if name and len(name) <= 255 and all("!" <= ch <= "~" for ch in name) else "-"


def edge_limits(settings: Settings) -> EdgeLimits:
    """The limits on request heads that uvicorn's protocol applies (the `HTTP_*` settings; `cli.py` passes them)."""
    return EdgeLimits(max_field_bytes=settings.http_max_field_bytes, max_head_bytes=settings.http_max_head_bytes,
                      max_fields=settings.http_max_fields, head_timeout_s=settings.http_head_timeout_s,
                      max_query_bytes=settings.http_max_query_bytes, max_query_params=settings.http_max_query_params)


def upstream_auth(settings: Settings) -> UpstreamAuth | None:
    """How the gateway authenticates to the PACS; the settings allow at most one way."""
    if settings.pacs_authorization_token is not None:
        return StaticAuthorization.bearer(settings.pacs_authorization_token.get_secret_value())
    if settings.pacs_username is not None and settings.pacs_password is not None:
        return StaticAuthorization.basic(settings.pacs_username, settings.pacs_password.get_secret_value())
    url, client = settings.pacs_oauth_token_url, settings.pacs_oauth_client_id
    secret = settings.pacs_oauth_client_secret
    if url is not None and client is not None and secret is not None:
        return OAuth2ClientCredentials(
            token_url=str(url), client_id=client, client_secret=secret.get_secret_value(),
            scope=settings.pacs_oauth_scope,
            timeout=httpx.Timeout(settings.pacs_connect_timeout_s, read=settings.pacs_read_timeout_s),
        )
    return None


def _authenticator(settings: Settings) -> Authenticator:
    if settings.auth_mode is AuthMode.NONE:
        return NoAuthentication()
    rules = TokenRules(
        algorithms=tuple(settings.jwt_algorithms), roles_claim=settings.auth_roles_claim,
        patient_claim=settings.auth_patient_id_claim, issuer=settings.auth_issuer, audience=settings.auth_audience,
        clock_skew_s=settings.auth_clock_skew_s,
    )
    if settings.auth_jwt_secret is not None:
        return JwtAuthenticator(rules=rules, secret=settings.auth_jwt_secret.get_secret_value())
    if settings.auth_jwks_url is None:  # Settings refuses this already; said again for the type checker
        raise ValueError("AUTH_MODE=jwt needs AUTH_JWT_SECRET or AUTH_JWKS_URL")
    return JwtAuthenticator(rules=rules, jwks=JwksSource(
        url=str(settings.auth_jwks_url), cache_s=settings.auth_jwks_cache_s,
        min_refetch_s=settings.auth_jwks_min_refetch_s,
    ))


def _delivery_policy(settings: Settings) -> DeliveryPolicy:
    secret = settings.callback_signing_secret
    return DeliveryPolicy(
        timeout_s=settings.callback_timeout_s, max_attempts=settings.callback_max_attempts,
        backoff_base_s=settings.callback_backoff_base_s, max_backoff_s=settings.callback_max_backoff_s,
        lease_s=settings.callback_lease_s, poll_s=settings.callback_poll_s, concurrency=settings.callback_concurrency,
        signing_secret=secret.get_secret_value().encode() if secret else None,
    )
