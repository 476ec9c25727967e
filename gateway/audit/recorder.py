"""Recording the audit trail of every audited request, before its answer leaves (issue 13).

`AuditMiddleware` wraps the routes. During the request, the code that knows the facts notes them in the request's
`AuditFacts` (who the caller is, which patient and studies, why a request was refused); when the answer starts, the
middleware turns route, status and facts into an `AuditRecord` (`classify`, given by the assembly) and holds the
answer's first byte until the journal has committed the record. If the record cannot be committed, a successful
answer is replaced by `503 audit_unavailable` (fail closed); a refusal is sent as it is, since it gave nothing away.
Routes the classifier returns no record for (health, metrics, the docs) are passed through untouched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.facts import AuditFacts, enter_facts, leave_facts
from gateway.audit.journal import AuditJournal, AuditUnavailable
from gateway.audit.records import AuditRecord
from gateway.errors import error_response
from gateway.store.audit import AuditRow

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One finished request, as the classifier sees it."""

    method: str
    route: str  # the route template (`/exams/studies/{study}/series`)
    path_params: dict[str, str]
    query: list[tuple[str, str]]
    status: int
    request_id: str
    when: datetime
    facts: AuditFacts
    client: str | None = None  # the client's address, as seen through TRUSTED_PROXIES


Classifier = Callable[[Exchange], AuditRecord | None]
RouteOf = Callable[[Scope], str]

def row_of(record: AuditRecord) -> AuditRow:
    """The stored form of a record: the columns the auditor's search filters on, and the record as JSON (exact).

    The columns hold what any database takes: a token's `sub` is whatever the IdP wrote (a NUL, a lone surrogate,
    a kilobyte), and one bad value would fail the whole group commit, every request of the batch with it. So they are
    cut to their width and such characters replaced; the record itself keeps every value exactly."""
    return AuditRow(recorded_at=record.when.timestamp(), request_id=_column(record.request_id, 64) or "",
                    event=record.kind.name.lower(), outcome=int(record.outcome),
                    patient_id=_column(record.patient_id, 64),
                    study_uid=_column(record.studies[0].study_uid if record.studies else None, 64),
                    subject=_column(record.actor.subject or None, 256), record=record.to_json())


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates: no database column takes them


def _column(value: str | None, width: int) -> str | None:
    if value is None:
        return None
    return _UNSTORABLE.sub("\ufffd", value[:width])


class AuditMiddleware:
    def __init__(self, app: ASGIApp, *, journal: AuditJournal, classify: Classifier, route_of: RouteOf,
                 request_id_of: Callable[[], str], trusted_proxies: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._trusted = trusted_proxies
        self._journal = journal
        self._classify = classify
        self._route_of = route_of
        self._request_id_of = request_id_of
        self._in_flight = 0  # requests inside this middleware: one alone has no other record to share a commit with

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        facts = AuditFacts()
        token = enter_facts(facts)
        self._in_flight += 1
        arrived = dict(scope)  # routing changes the scope (a Mount moves root_path): route from the scope as it came
        replaced = False

        async def send_after_record(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the original answer's body, after a 503 was sent instead
            if message["type"] == "http.response.start":
                try:
                    await self._record(arrived, scope, message["status"], facts)
                except AuditUnavailable as exc:
                    if message["status"] < 400:
                        replaced = True
                        await _send_unavailable(scope, receive, send, exc)
                        return
            await send(message)

        try:
            await self.app(scope, receive, send_after_record)
        finally:
            self._in_flight -= 1
            leave_facts(token)

    async def _record(self, arrived: Scope, routed: Scope, status: int, facts: AuditFacts) -> None:
        exchange = Exchange(
            method=str(arrived["method"]), route=self._route_of(arrived),
            path_params={k: str(v) for k, v in routed.get("path_params", {}).items()},
            query=_query(arrived), status=status, request_id=self._request_id_of(), when=datetime.now(UTC),
            facts=facts, client=client_address(arrived, self._trusted),
        )
        record = self._classify(exchange)
        if record is not None:
            await self._journal.write(row_of(record), alone=self._in_flight == 1)


def client_address(scope: Scope, trusted: frozenset[str]) -> str | None:
    """The peer's address; behind a trusted proxy, the client it names (`Forwarded: for=`, else the first
    `X-Forwarded-For`), as `/dicomweb` believes the proxy's host and scheme (docs/configuration.md, TRUSTED_PROXIES)."""
    peer = scope.get("client")
    address: str | None = str(peer[0]) if peer else None
    if address is None or address not in trusted:
        return address
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
    named: str | None = None
    if "forwarded" in headers:
        first = headers["forwarded"].split(",")[0]
        pairs = dict(part.strip().split("=", 1) for part in first.split(";") if "=" in part)
        named = {k.lower(): v for k, v in pairs.items()}.get("for")
    elif "x-forwarded-for" in headers:
        named = headers["x-forwarded-for"].split(",")[0]
    if not named:
        return address
    named = named.strip().strip('"')
    if named.startswith("["):  # RFC 7239 §6: an IPv6 address in brackets, maybe with a port
        return named[1:named.find("]")] if "]" in named else address
    return named.rsplit(":", 1)[0] if named.count(":") == 1 else named


def _query(scope: Scope) -> list[tuple[str, str]]:
    raw = scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else []


async def _send_unavailable(scope: Scope, receive: Receive, send: Send, exc: AuditUnavailable) -> None:
    answer = error_response(exc.status_code, exc.code, exc.message, exc.details, {"Cache-Control": "no-store"})
    await answer(scope, receive, send)
