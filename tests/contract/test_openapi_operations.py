"""openapi.yaml walked against the running gateway: every documented operation is called with each of its
documented parameters (their examples, with the UIDs, patient and event ids of data that exists) and each of its
request body examples, in front of Orthanc (and the UPS-RS simulator for `/workitems`).

Every answer must be documented: its status for that operation, its media type for that status, and a JSON body
must match the documented schema. A documented parameter is never refused as unknown, and each operation answers
its documented success status at least once. tests/test_openapi.py checks the document itself and its routes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.audit.records import Action, Actor, AuditRecord, EventKind, Outcome, Peer
from gateway.store.audit import AuditRow, AuditStore
from gateway.store.db import create_engine
from tests.conftest import gateway_env
from tests.contract.conftest import UID_ROOT
from tests.ops.test_openapi import documented_response, iter_operations, load_spec, resolve, schema_errors
from tests.support.dicom_factory import Instance, generated
from tests.support.exams_support import SECRET, new_patient_id, token
from tests.support.orthanc import Orthanc
from tests.support.processes import GatewayProcess
from tests.support.servers import serve
from tests.support.ups_simulator import UpsSimulator

ALL_ROLES = ("clinician", "pacs", "auditor")  # auditor: GET /audit-events
VIEWER_SECRET = "contract-viewer-token-secret-0123456789"


@dataclass
class Live:
    """Data that exists, for the parameters that name it, and the two gateways."""

    exams_url: str
    worklist_url: str
    exam: Instance
    event_id: str
    workitem_study: str
    values: dict[str, str] = field(default_factory=dict)

    def base_url(self, path: str) -> str:
        return self.worklist_url if path.startswith("/workitems") else self.exams_url


@dataclass
class Call:
    why: str
    path_params: dict[str, str]
    query: list[tuple[str, str | int | float | bool | None]]
    body: tuple[str, bytes] | None = None  # (content type, bytes)
    headers: dict[str, str] = field(default_factory=dict)


def _env(work: Path, **settings: str) -> dict[str, str]:
    return gateway_env(auth_mode="jwt", auth_jwt_secret=SECRET, database_url=f"sqlite:///{work / 'gateway.db'}",
                       log_level="warning", dicom_uid_root=UID_ROOT, viewer_token_secret=VIEWER_SECRET,
                       public_base_url="https://gateway.example.org", **settings)


async def _add_audit_record(database_url: str, patient: str) -> None:
    """A record in the trail, so that `GET /audit-events` answers one (recording from the routes is not wired yet)."""
    record = AuditRecord(kind=EventKind.QUERY, action=Action.EXECUTE, outcome=Outcome.SUCCESS,
                         when=datetime.now(UTC), request_id="walk", actor=Actor("walker", ("clinician",)),
                         peer=Peer("dicom-gateway"), patient_id=patient, resource="/exams/studies",
                         query=(("PatientId", patient),))
    engine = create_engine(database_url)
    try:
        await AuditStore(engine).add_many([AuditRow(
            recorded_at=record.when.timestamp(), request_id=record.request_id, event="query", outcome=0,
            patient_id=patient, study_uid=None, subject=record.actor.subject, record=record.to_json())])
    finally:
        await engine.dispose()


def _auth(*roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(*roles)}"}


@pytest.fixture(scope="module")
def live(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("openapi-walk")
    simulator = UpsSimulator("standard")
    with serve(simulator.app) as ups:
        root = ups.url + simulator.base_path.removesuffix("/workitems")
        (work / "exams").mkdir()
        (work / "worklist").mkdir()
        with GatewayProcess(_env(work / "exams", pacs_service_url=orthanc.dicomweb_url, pacs_profile="orthanc"),
                            work / "exams.log") as exams, \
             GatewayProcess(_env(work / "worklist", pacs_service_url=root, pacs_profile="standard"),
                            work / "worklist.log") as worklist:
            patient = new_patient_id("WALK")
            exam = generated(patient)
            stored = httpx.post(f"{exams.url}/exams", files=[("file", ("a.dcm", exam.data))],
                                headers=_auth("clinician"))
            assert stored.status_code == 200, stored.text
            event = {"SourceID": "WALK", "StudyInstanceUID": exam.study_uid, "EventType": "COMPLETED",
                     "PatientID": patient}
            posted = httpx.post(f"{exams.url}/new-exam-callback", json=event, headers=_auth("pacs"))
            assert posted.status_code == 204, posted.text
            workitem_study = f"{UID_ROOT}.99.1"
            body = {"PatientID": patient, "PatientName": "WALK^TEST", "ScheduledStationAETitle": "NGV",
                    "ScheduledProcedureStepStartDate": "20000101", "ScheduledProcedureStepStartTime": "120000",
                    "ScheduledProcedureStepDescription": "Walk", "Modality": "CT", "AccessionNumber": "WALK1",
                    "StudyInstanceUID": workitem_study}
            created = httpx.post(f"{worklist.url}/workitems", json=body, headers=_auth("clinician"))
            assert created.status_code == 200, created.text
            asyncio.run(_add_audit_record(f"sqlite:///{work / 'exams' / 'gateway.db'}", patient))
            trail = httpx.get(f"{exams.url}/audit-events", headers=_auth("auditor"))
            assert len(trail.json()["events"]) == 1, trail.text
            yield Live(exams.url, worklist.url, exam, posted.headers["X-Event-Id"], workitem_study, {
                "PatientId": patient, "patientId": patient, "patientID": patient, "PatientID": patient,
                "study": exam.study_uid, "studyUID": exam.study_uid, "StudyInstanceUID": exam.study_uid,
                "series": exam.series_uid, "SeriesInstanceUID": exam.series_uid, "instance": exam.sop_uid,
                "SOPInstanceUID": exam.sop_uid, "AccessionNumber": "ACC1", "Modality": "CT",
                "ModalitiesInStudy": "CT", "id": posted.headers["X-Event-Id"], "studyInstanceUID": workitem_study,
                "path": f"studies/{exam.study_uid}/metadata", "asset": "docs.js",
            })


def _examples(spec: dict[str, Any], parameter: dict[str, Any]) -> list[Any]:
    if "example" in parameter:
        return [parameter["example"]]
    if "examples" in parameter:
        return [resolve(spec, example)["value"] for example in parameter["examples"].values()]
    schema = parameter.get("schema", {})
    return [schema["example"]] if "example" in schema else []


def _as_query(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def calls(spec: dict[str, Any], path: str, method: str, operation: dict[str, Any], live: Live) -> list[Call]:
    """The required parameters (live values), then one call per optional parameter example, then per body example."""
    item = resolve(spec, spec["paths"][path])
    parameters = [resolve(spec, p) for p in [*item.get("parameters", []), *operation.get("parameters", [])]]
    path_params = {p["name"]: live.values[p["name"]] for p in parameters if p["in"] == "path"}
    if method == "post" and "path" in path_params:
        path_params["path"] = "studies"  # STOW-RS
    required: list[tuple[str, str | int | float | bool | None]] = [
        (p["name"], live.values.get(p["name"]) or str(_examples(spec, p)[0]))
        for p in parameters if p["in"] == "query" and p.get("required")]
    made = [Call("the required parameters", path_params, list(required))]
    for p in parameters:
        if p["in"] != "query" or p.get("required"):
            continue
        for example in _examples(spec, p):
            value = live.values.get(p["name"])
            if p["name"] == "token":
                viewer = httpx.get(f"{live.exams_url}/token", params={"studyUID": live.exam.study_uid},
                                   headers=_auth("clinician")).json()["token"]
                made.append(Call("token", path_params, [*required, ("token", viewer)], headers={"Authorization": ""}))
                continue
            query = [(p["name"], v) for v in ([value] if value is not None else _as_query(example))]
            made.append(Call(f"{p['name']}={query}", path_params, [*required, *query]))
    body = resolve(spec, operation.get("requestBody", {}))
    payloads = [(media_type, payload) for media_type, media in (body.get("content") or {}).items()
                for payload in _bodies(media_type, media, live)]
    if not payloads:
        return made
    # With a request body: each parameter call sends the first body example, and each other example is a call.
    made = [Call(call.why, call.path_params, call.query, payloads[0][1], call.headers) for call in made]
    return made + [Call(f"body {media_type}", path_params, list(required), body=payload)
                   for media_type, payload in payloads[1:]]


def _bodies(media_type: str, media: dict[str, Any], live: Live) -> Iterator[tuple[str, bytes]]:
    if media_type == "multipart/form-data":
        file = generated(live.values["PatientId"]).data
        request = httpx.Request("POST", "http://x", files=[("file", ("x.dcm", file))])
        yield request.headers["content-type"], request.read()
    elif media_type == "multipart/related":
        part = generated(live.values["PatientId"]).data
        yield ('multipart/related; type="application/dicom"; boundary=walk',
               b"--walk\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--walk--\r\n")
    elif "example" in media:
        example = media["example"]
        yield media_type, (example if isinstance(example, str) else json.dumps(example)).encode()


def check(spec: dict[str, Any], where: str, operation: dict[str, Any], response: httpx.Response) -> list[str]:
    documented = resolve(spec, documented_response(operation, response.status_code))
    if documented is None:
        return [f"{where} → {response.status_code}: status not documented ({response.text[:300]})"]
    problems = []
    if response.status_code == 400 and "unknown parameter" in response.text:
        problems.append(f"{where} → 400: a documented parameter is refused ({response.text[:300]})")
    content = documented.get("content") or {}
    media_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if not content:
        if response.content:
            problems.append(f"{where} → {response.status_code}: documented without a body, answered {media_type}")
        return problems
    if media_type not in content:
        return [*problems, f"{where} → {response.status_code}: answered {media_type}, documented {sorted(content)}"]
    schema = content[media_type].get("schema")
    if schema is not None and media_type.endswith("json"):
        problems += [f"{where} → {response.status_code}: {error}"
                     for error in schema_errors(spec, schema, response.json())]
    return problems


def test_every_documented_operation_answers_as_documented(live: Live) -> None:
    spec = load_spec()
    failures: list[str] = []
    succeeded: set[str] = set()
    operations = sorted(iter_operations(spec), key=lambda op: op[1] == "delete")  # deletions last
    for path, method, operation in operations:
        public = not operation.get("security", spec.get("security") or [])
        for call in calls(spec, path, method, operation, live):
            url = live.base_url(path) + path.format(**call.path_params)
            headers = {**({} if public else _auth(*ALL_ROLES)), **call.headers}
            headers = {name: value for name, value in headers.items() if value}
            content = None
            if call.body is not None:
                headers["Content-Type"], content = call.body
            response = httpx.request(method.upper(), url, params=call.query, headers=headers, content=content,
                                     timeout=30)
            where = f"{method.upper()} {path} ({call.why})"
            print(where, "→", response.status_code)
            failures += check(spec, where, operation, response)
            if response.is_success:
                succeeded.add(f"{method.upper()} {path}")
    never = sorted({f"{m.upper()} {p}" for p, m, _ in operations} - succeeded)
    assert not failures, "\n".join(failures)
    assert not never, f"never answered with success: {never}"
