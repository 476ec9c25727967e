"""Which record each kind of request makes (`gateway.audit.classify`), route by route, and for refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.audit.classify import EVENTS, Classifier
from gateway.audit.facts import AuditFacts
from gateway.audit.recorder import Exchange
from gateway.audit.records import Action, Actor, AlertType, DataFlow, EventKind, Outcome, Peer

INSTANCE = "/exams/studies/{study}/series/{series}/instance/{instance}"
UIDS = {"study": "1.2.3", "series": "1.2.4", "instance": "1.2.5"}
classify = Classifier(peer=Peer(user_id="dicom-gateway"))


def exchange(method: str, route: str, status: int = 200, *, query: list[tuple[str, str]] | None = None,
             params: dict[str, str] | None = None, patient: str | None = "PAT-1",
             refusal: str | None = None) -> Exchange:
    facts = AuditFacts(actor=Actor(subject="alice", roles=("patient",)), patient_id=patient, refusal=refusal)
    return Exchange(method=method, route=route, path_params=params or {}, query=query or [], status=status,
                    request_id="req-1", when=datetime(2026, 12, 1, tzinfo=UTC), facts=facts)


@pytest.mark.parametrize(("method", "route", "query", "kind", "action", "flow"), [
    ("GET", "/exams/studies", [("PatientId", "PAT-1")], EventKind.QUERY, Action.EXECUTE, None),
    ("GET", INSTANCE, [("fileType", "application/dicom")], EventKind.INSTANCES_TRANSFERRED, Action.READ,
     DataFlow.TO_ACTOR),
    ("GET", INSTANCE, [("fileType", "image/jpeg")], EventKind.INSTANCES_ACCESSED, Action.READ, None),
    ("HEAD", INSTANCE, [("fileType", "application/dicom")], EventKind.INSTANCES_TRANSFERRED, Action.READ,
     DataFlow.TO_ACTOR),
    ("POST", "/dicomweb/studies/{study}", [], EventKind.INSTANCES_TRANSFERRED, Action.CREATE, DataFlow.FROM_ACTOR),
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered", [],
     EventKind.INSTANCES_ACCESSED, Action.READ, None),
    ("DELETE", "/workitems/{studyInstanceUID}", [], EventKind.ORDER_RECORD, Action.UPDATE, None),
])
def test_each_route_is_its_event(method: str, route: str, query: list[tuple[str, str]], kind: EventKind,
                                 action: Action, flow: DataFlow | None) -> None:
    params = {"studyInstanceUID": "1.2.3"} if "studyInstanceUID" in route else UIDS
    record = classify(exchange(method, route, query=query, params=params))
    assert record is not None
    assert (record.kind, record.action, record.data_flow, record.outcome) == (kind, action, flow, Outcome.SUCCESS)
    assert record.patient_id == "PAT-1"
    if kind is not EventKind.QUERY:
        assert record.studies[0].study_uid == "1.2.3"


def test_unaudited_routes_make_no_record() -> None:
    for route in ("/-/healthz", "/-/metrics", "/uid", "/openapi.yaml", "/docs"):
        assert classify(exchange("GET", route)) is None


@pytest.mark.parametrize(("status", "refusal", "alert"), [
    (401, None, AlertType.NODE_AUTHENTICATION),
    (403, None, AlertType.USE_OF_RESTRICTED_FUNCTION),
    (404, "not_this_patients", AlertType.USE_OF_RESTRICTED_FUNCTION),  # a scope refusal answered as a 404
])
def test_refusals_are_security_alerts(status: int, refusal: str | None, alert: AlertType) -> None:
    record = classify(exchange("GET", INSTANCE, status, query=[("fileType", "application/dicom")], params=UIDS,
                               refusal=refusal))
    assert record is not None
    assert (record.kind, record.alert, record.outcome) == (EventKind.SECURITY_ALERT, alert, Outcome.MINOR_FAILURE)


def test_a_failure_whose_patient_never_became_known_is_the_query_it_was() -> None:
    record = classify(exchange("GET", INSTANCE, 400, params=UIDS, patient=None))
    assert record is not None
    assert (record.kind, record.outcome, record.outcome_description) == (EventKind.QUERY, Outcome.MINOR_FAILURE,
                                                                         "400")


def test_a_viewer_token_issued_is_an_informative_alert() -> None:
    record = classify(exchange("GET", "/token", query=[("studyUID", "1.2.3")]))
    assert record is not None
    assert (record.kind, record.alert, record.outcome) == (
        EventKind.SECURITY_ALERT, AlertType.OBJECT_SECURITY_ATTRIBUTES_CHANGED, Outcome.SUCCESS)
    assert record.studies[0].study_uid == "1.2.3"


def test_every_audited_route_exists_in_the_gateway() -> None:
    """The table names real route templates (a renamed route would silently stop being audited)."""
    from starlette.routing import Mount

    from gateway.app import create_app
    from tests.conftest import make_settings

    templates: set[str] = set()
    for route in create_app(make_settings()).routes:
        templates.add(getattr(route, "path", ""))
        mount = getattr(route, "app", None)  # /dicomweb: a Mount of the resource routes behind one Route
        if isinstance(mount, Mount):
            templates |= {mount.path + getattr(inner, "path", "") for inner in mount.routes}
    missing = {route for _, route in EVENTS} - templates
    assert missing == set()
