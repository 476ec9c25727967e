"""The audit middleware (`gateway.audit.recorder`) around a small Starlette app, with the real journal and store on
SQLite and PostgreSQL: the record is committed before the answer's first byte, an answer without its record is a
503 (fail closed), a refusal is sent even then, and unaudited routes pass untouched. (Wiring it into the gateway's
routes is the next step of issue 13.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.audit.facts import AuditFacts, note_actor, note_patient, note_refusal
from gateway.audit.journal import AuditJournal
from gateway.audit.recorder import AuditMiddleware, Exchange
from gateway.audit.records import Action, Actor, AlertType, AuditRecord, EventKind, Outcome, Peer
from gateway.errors import EXCEPTION_HANDLERS, Forbidden
from gateway.store.audit import AuditStore
from gateway.store.db import create_engine, migrate

GATEWAY = Peer(user_id="dicom-gateway")


def classify(exchange: Exchange) -> AuditRecord | None:
    if exchange.route == "/health":
        return None
    actor = exchange.facts.actor or Actor(subject="")
    if exchange.status >= 400:
        return AuditRecord(kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE,
                           when=exchange.when, request_id=exchange.request_id, actor=actor, peer=GATEWAY,
                           patient_id=exchange.facts.patient_id, resource=exchange.route,
                           alert=AlertType.USE_OF_RESTRICTED_FUNCTION,
                           outcome_description=exchange.facts.refusal or "")
    return AuditRecord(kind=EventKind.QUERY, action=Action.EXECUTE, outcome=Outcome.SUCCESS, when=exchange.when,
                       request_id=exchange.request_id, actor=actor, peer=GATEWAY,
                       patient_id=exchange.facts.patient_id, resource=exchange.route, query=tuple(exchange.query))


async def things(request: Request) -> Response:
    note_actor(Actor(subject="alice", roles=("patient",)))
    note_patient(request.path_params["patient"])
    return JSONResponse({"ok": True})


async def streamed(request: Request) -> Response:
    note_patient("PAT-S")

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(50):
            yield b"x" * 1000 + str(n).encode()

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def refused(request: Request) -> Response:
    note_patient("PAT-OTHER")
    note_refusal("forbidden")
    raise Forbidden("not yours")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def app_with(journal: AuditJournal) -> Starlette:
    routes = [Route("/patients/{patient}/things", things), Route("/stream", streamed), Route("/refused", refused),
              Route("/health", health)]

    def route_of(scope: object) -> str:
        assert isinstance(scope, dict)
        for route in routes:
            if route.matches(scope)[0].name == "FULL":
                return route.path
        return "?"

    counter = iter(range(10_000))
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, middleware=[Middleware(
        AuditMiddleware, journal=journal, classify=classify, route_of=route_of,
        request_id_of=lambda: f"req-{next(counter)}")])


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield AuditStore(engine)
    await engine.dispose()


@pytest.fixture
async def client(store: AuditStore) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    journal = AuditJournal(store=store)
    await journal.start()
    app = app_with(journal)
    app.state.journal = journal
    try:
        yield lambda: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test")
    finally:
        await journal.stop()


async def test_an_answer_leaves_after_its_record_is_stored(client: Callable[[], httpx.AsyncClient],
                                                          store: AuditStore) -> None:
    async with client() as c:
        answer = await c.get("/patients/PAT-1/things?PatientId=PAT-1&limit=5")
        assert answer.status_code == 200
        # No wait, no retry: the record was committed before the first byte of the answer was sent.
        [stored] = await store.search(patient_id="PAT-1", since=None, until=None, limit=10)
        record = AuditRecord.from_json(stored.row.record)
        assert (record.kind, record.actor.subject, record.query) == (
            EventKind.QUERY, "alice", (("PatientId", "PAT-1"), ("limit", "5")))
        assert isinstance(record.when, datetime)
        streamed = await c.get("/stream")
        assert streamed.content == b"".join(b"x" * 1000 + str(n).encode() for n in range(50))
        assert len(await store.search(patient_id="PAT-S", since=None, until=None, limit=10)) == 1
        assert (await c.get("/health")).status_code == 200
    assert len(await store.search(patient_id=None, since=None, until=None, limit=10)) == 2  # /health: none


async def test_a_refusal_is_recorded_with_why(client: Callable[[], httpx.AsyncClient], store: AuditStore) -> None:
    async with client() as c:
        answer = await c.get("/refused")
    assert answer.status_code == 403
    [stored] = await store.search(patient_id="PAT-OTHER", since=None, until=None, limit=10)
    record = AuditRecord.from_json(stored.row.record)
    assert (record.kind, record.outcome, record.outcome_description) == (
        EventKind.SECURITY_ALERT, Outcome.MINOR_FAILURE, "forbidden")


async def test_without_a_store_a_success_is_503_and_a_refusal_is_still_sent(
        client: Callable[[], httpx.AsyncClient], store: AuditStore) -> None:
    broken = create_engine("sqlite:////nonexistent-dir-for-audit/x.db")
    try:
        # The journal's store goes away (its disk, its server): nothing can be committed.
        async with client() as c:
            journal = c._transport.app.state.journal  # type: ignore[attr-defined]
            journal._store = AuditStore(broken)
            answer = await c.get("/patients/PAT-1/things")
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "audit_unavailable"
            streamed = await c.get("/stream")
            assert streamed.status_code == 503  # and not a byte of the stream
            assert streamed.json()["error"]["code"] == "audit_unavailable"
            assert (await c.get("/refused")).status_code == 403
            assert (await c.get("/health")).status_code == 200
            journal._store = store
    finally:
        await broken.dispose()
    assert await store.search(patient_id=None, since=None, until=None, limit=10) == []


def test_the_columns_hold_what_any_database_takes_and_the_record_stays_exact() -> None:
    from gateway.audit.recorder import row_of

    subject = "a\x00b\ud800" + "x" * 1000  # a token's sub: whatever the IdP wrote
    record = classify(Exchange(method="GET", route="/stream", path_params={}, query=[], status=200,
                               request_id="req-1", when=datetime.now(UTC),
                               facts=AuditFacts(actor=Actor(subject=subject), patient_id="PAT-1")))
    assert record is not None
    row = row_of(record)
    assert row.subject is not None
    assert row.subject.startswith("a\ufffdb\ufffd")
    assert len(row.subject) == 256
    assert AuditRecord.from_json(row.record).actor.subject == subject


@pytest.mark.parametrize(("peer", "headers", "address"), [
    ("10.0.0.5", [], "10.0.0.5"),
    ("10.0.0.5", [(b"x-forwarded-for", b"203.0.113.9")], "10.0.0.5"),  # not a trusted proxy: its word is not taken
    ("10.0.0.1", [(b"x-forwarded-for", b"203.0.113.9, 10.0.0.7")], "203.0.113.9"),
    ("10.0.0.1", [(b"forwarded", b'for="[2001:db8::1]:4711";proto=https, for=10.0.0.7')], "2001:db8::1"),
    ("10.0.0.1", [(b"forwarded", b"for=198.51.100.4:8080")], "198.51.100.4"),
    ("10.0.0.1", [(b"forwarded", b"proto=https")], "10.0.0.1"),  # names no client
])
def test_the_client_is_seen_through_trusted_proxies_only(peer: str, headers: list[tuple[bytes, bytes]],
                                                         address: str) -> None:
    from gateway.audit.recorder import client_address

    scope = {"type": "http", "client": (peer, 5555), "headers": headers}
    assert client_address(scope, frozenset({"10.0.0.1"})) == address
