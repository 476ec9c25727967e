"""AUDIT_TRAIL=on through the real gateway in front of Orthanc, on SQLite and PostgreSQL, shipping to a real
rsyslogd: each kind of /exams access and each kind of refusal leaves the record it should, in the store (read
back by an auditor through GET /audit-events) and at the syslog server (parsed back from what rsyslog wrote)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.audit.syslog import BOM
from tests.audit.test_schema import RNG, XMLLINT
from tests.support.dicom_factory import generated
from tests.support.exams_support import Exams, clinician, gateway, new_patient_id, patient, token
from tests.support.orthanc import Orthanc
from tests.support.rsyslog import Rsyslog
from tests.worklist.test_workitems import SEED, first, stack

AUDITOR = {"Authorization": f"Bearer {token('auditor')}"}
BOUNDARY = "audit-boundary"


def multipart(*files: bytes) -> bytes:
    """A STOW-RS body of DICOM files."""
    parts = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
             for data in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
async def audited(orthanc: Orthanc, rsyslog: Rsyslog, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(orthanc.dicomweb_url, audit_trail="on", audit_syslog_url=rsyslog.url,
                       database_url=database_url, audit_source_id="gw-under-test") as client:
        yield client


async def trail(client: httpx.AsyncClient, patient_id: str) -> list[dict[str, Any]]:
    answer = await client.get("/audit-events", params={"PatientId": patient_id}, headers=AUDITOR)
    assert answer.status_code == 200, answer.text
    return [event["record"] for event in answer.json()["events"]]


def shipped(rsyslog: Rsyslog, patient_id: str) -> list[tuple[ET.Element, bytes]]:
    """The audit messages rsyslog wrote that name `patient_id` as their patient participant object: each parsed,
    and its XML as received."""
    found = []
    for message in rsyslog.received():
        xml = message.raw[message.raw.index(BOM) + len(BOM):]
        root = ET.fromstring(xml)  # noqa: S314 - our own XML
        ids = {o.get("ParticipantObjectID") for o in root.iter("ParticipantObjectIdentification")
               if (code := o.find("ParticipantObjectIDTypeCode")) is not None and code.get("csd-code") == "2"}
        if patient_id in ids:
            found.append((root, xml))
    return found


def event_id(message: ET.Element) -> str:
    code = message.find("EventIdentification/EventID")
    assert code is not None
    return str(code.get("originalText"))


def assert_valid(messages: list[bytes]) -> None:
    """Each message as rsyslog received it validates against the A.5.1.1 schema (xmllint, tests/audit/test_schema)."""
    if XMLLINT is None:
        return  # tests/audit/test_schema.py is skipped then, with its reason
    with tempfile.TemporaryDirectory() as work:
        files = []
        for n, message in enumerate(messages):
            files.append(Path(work) / f"{n}.xml")
            files[-1].write_bytes(message)
        checked = subprocess.run([XMLLINT, "--noout", "--relaxng", str(RNG), *map(str, files)],
                                 capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr


async def until_shipped(rsyslog: Rsyslog, patient_id: str, count: int) -> list[ET.Element]:
    for _ in range(200):
        found = shipped(rsyslog, patient_id)
        if len(found) >= count:
            assert_valid([xml for _, xml in found])
            return [root for root, _ in found]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(shipped(rsyslog, patient_id))} of {count} messages for {patient_id} shipped")


async def test_a_patients_accesses_are_recorded_before_each_answer_and_shipped(
        audited: httpx.AsyncClient, rsyslog: Rsyslog) -> None:
    owner = new_patient_id()
    instance = generated(owner)
    exams = Exams(audited)
    assert (await exams.upload(instance)).status_code == 200
    mine = patient(owner)
    assert (await exams.studies(owner, headers=mine)).status_code == 200
    assert (await exams.file(instance, headers=mine)).status_code == 200
    assert (await exams.file(instance, headers=mine, file_type="image/jpeg")).status_code == 200
    records = await trail(audited, owner)  # read at once: each answer left after its record was committed
    kinds = [(r["kind"], r["action"], r["actor"]["roles"]) for r in records]
    assert kinds == [
        ("INSTANCES_TRANSFERRED", "C", ["clinician"]),  # the upload, the clinician its actor
        ("QUERY", "E", ["patient"]),
        ("INSTANCES_TRANSFERRED", "R", ["patient"]),
        ("INSTANCES_ACCESSED", "R", ["patient"]),  # the thumbnail
    ]
    assert all(r["outcome"] == 0 and r["patient_id"] == owner for r in records)
    assert {r["actor"]["address"] for r in records} == {"127.0.0.1"}  # the in-process client's address
    assert records[2]["studies"][0]["study_uid"] == instance.study_uid
    # Five at the repository: the four, and the auditor's own reading of the trail (a query naming the patient).
    messages = await until_shipped(rsyslog, owner, 5)
    assert sorted(event_id(m) for m in messages) == sorted(
        ["DICOM Instances Transferred", "Query", "DICOM Instances Transferred", "DICOM Instances Accessed", "Query"])
    assert (await trail(audited, owner))[-1]["actor"]["roles"] == ["auditor"]
    source = messages[0].find("AuditSourceIdentification")
    assert source is not None
    assert source.get("AuditSourceID") == "gw-under-test"


async def test_refusals_are_security_alerts(audited: httpx.AsyncClient, rsyslog: Rsyslog) -> None:
    victim, intruder = new_patient_id("VICTIM"), new_patient_id("INTRUDER")
    instance = generated(victim)
    exams = Exams(audited)
    assert (await exams.upload(instance)).status_code == 200
    # Another patient's file, by its UIDs: answered 404, recorded as the refusal it is.
    assert (await exams.file(instance, patient_id=intruder, headers=patient(intruder))).status_code == 404
    # A patient naming another patient: 403.
    assert (await exams.studies(victim, headers=patient(intruder))).status_code == 403
    # A bad token: 401.
    bad = {"Authorization": "Bearer not.a.token"}
    assert (await exams.studies(victim, headers=bad)).status_code == 401
    alerts = [r for r in await trail(audited, intruder) if r["kind"] == "SECURITY_ALERT"]
    assert [(r["alert"], r["outcome"]) for r in alerts] == [("USE_OF_RESTRICTED_FUNCTION", 4)]
    assert alerts[0]["outcome_description"] == "out_of_scope"
    named = [r for r in await trail(audited, victim) if r["kind"] == "SECURITY_ALERT"]
    assert [(r["alert"], r["actor"]["subject"]) for r in named] == [
        ("USE_OF_RESTRICTED_FUNCTION", "tester"),  # the intruder's token named the victim: 403
        ("NODE_AUTHENTICATION", ""),  # no verified caller
    ]
    messages = await until_shipped(rsyslog, intruder, 1)
    assert event_id(messages[0]) == "Security Alert"


async def test_an_unaudited_route_leaves_no_record(audited: httpx.AsyncClient) -> None:
    assert (await audited.get("/uid", headers=clinician())).status_code == 200
    assert (await audited.get("/-/healthz")).status_code == 200
    answer = await audited.get("/audit-events", headers=AUDITOR)
    assert answer.json()["events"] == []  # the listing itself is recorded once it is answered
    again = await audited.get("/audit-events", headers=AUDITOR)
    assert [e["record"]["resource"] for e in again.json()["events"]] == ["/audit-events"]


async def test_a_viewer_token_issued_and_used_is_recorded(audited: httpx.AsyncClient, rsyslog: Rsyslog) -> None:
    owner = new_patient_id()
    instance = generated(owner)
    assert (await Exams(audited).upload(instance)).status_code == 200
    issued = await audited.get("/token", params={"studyUID": instance.study_uid, "patientID": owner,
                                                 "user": "dr-viewer"}, headers=clinician())
    assert issued.status_code == 200, issued.text
    viewer = {"Authorization": f"Bearer {issued.json()['token']}"}
    metadata = await audited.get(f"/dicomweb/studies/{instance.study_uid}/metadata", headers=viewer)
    assert metadata.status_code == 200, metadata.text
    other = await audited.get(f"/dicomweb/studies/{generated(new_patient_id()).study_uid}/metadata", headers=viewer)
    assert other.status_code == 404  # outside the token's study
    records = [r for r in await trail(audited, owner) if r["kind"] != "INSTANCES_TRANSFERRED" or r["action"] != "C"]
    assert [(r["kind"], r["alert"], r["actor"]["subject"], r["outcome"]) for r in records[:3]] == [
        ("SECURITY_ALERT", "OBJECT_SECURITY_ATTRIBUTES_CHANGED", "tester", 0),  # the clinician issued it
        ("INSTANCES_TRANSFERRED", None, "dr-viewer", 0),  # the viewer read the study's metadata
        ("SECURITY_ALERT", "USE_OF_RESTRICTED_FUNCTION", "dr-viewer", 4),  # and tried another study
    ]
    assert records[1]["actor"]["roles"] == ["viewer-patient"]
    assert records[1]["studies"][0]["study_uid"] == instance.study_uid
    await until_shipped(rsyslog, owner, 4)


async def test_a_new_exam_callback_is_a_procedure_record_with_the_pacs_as_actor(audited: httpx.AsyncClient) -> None:
    owner = new_patient_id()
    body = {"SourceID": "PACS-1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.77", "PatientID": owner,
            "EventType": "COMPLETED"}
    pacs = {"Authorization": f"Bearer {token('pacs')}"}
    answer = await audited.post("/new-exam-callback", json=body, headers=pacs)
    assert answer.status_code == 204, answer.text
    [record] = await trail(audited, owner)
    assert (record["kind"], record["action"], record["actor"]["roles"]) == ("PROCEDURE_RECORD", "C", ["pacs"])
    assert record["studies"][0]["study_uid"] == body["StudyInstanceUID"]


async def test_worklist_create_search_and_cancel_are_order_records(rsyslog: Rsyslog, database_url: str) -> None:
    owner, intruder = new_patient_id(), new_patient_id("INTRUDER")
    async with stack("standard", audit_trail="on", audit_syslog_url=rsyslog.url, database_url=database_url) as s:
        created = await s.create({**SEED, "PatientID": owner})
        assert created.status_code == 200, created.text
        study = first(created.json(), "0020000D")
        listed = await s.client.get("/workitems", params={"patientID": owner}, headers=clinician())
        assert listed.status_code == 200
        cancelled = await s.client.delete(f"/workitems/{study}", headers=clinician())
        assert cancelled.status_code == 204, cancelled.text
        # Another patient's token naming the owner, to search and to create: both refused, both recorded.
        peek = await s.client.get("/workitems", params={"patientID": owner}, headers=patient(intruder))
        assert peek.status_code == 403
        assert (await s.create({**SEED, "PatientID": owner}, headers=patient(intruder))).status_code == 403
        records = await trail(s.client, owner)
        messages = await until_shipped(rsyslog, owner, 6)  # and the auditor's reading; shipped while it runs
    assert [(r["kind"], r["action"], r["outcome"]) for r in records] == [
        ("ORDER_RECORD", "C", 0), ("ORDER_RECORD", "R", 0), ("ORDER_RECORD", "U", 0),
        ("SECURITY_ALERT", "E", 4), ("SECURITY_ALERT", "E", 4),
    ]
    assert [[s["study_uid"] for s in r["studies"]] for r in records[:3]] == [[study], [], [study]]  # a search: none
    assert [r["alert"] for r in records[3:]] == ["USE_OF_RESTRICTED_FUNCTION"] * 2
    assert [r["resource"] for r in records] == ["/workitems", "/workitems", "/workitems/{studyInstanceUID}",
                                                "/workitems", "/workitems"]
    assert sorted(event_id(m) for m in messages) == sorted(["Order Record"] * 3 + ["Security Alert"] * 2 + ["Query"])


async def test_dicomweb_searches_renders_frames_and_stores_are_recorded(
        audited: httpx.AsyncClient, rsyslog: Rsyslog) -> None:
    owner = new_patient_id()
    instance = generated(owner)
    mine = patient(owner)
    level = f"/dicomweb/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}"
    stored = await audited.post("/dicomweb/studies", content=multipart(instance.data), headers={
        **clinician(), "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
    assert stored.status_code == 200, stored.text
    searched = await audited.get("/dicomweb/studies", params={"PatientID": owner}, headers=mine)
    assert searched.status_code == 200, searched.text
    rendered = await audited.get(f"{level}/rendered", headers={**mine, "Accept": "image/jpeg"})
    assert rendered.status_code == 200, rendered.text
    frames = await audited.get(f"{level}/frames/1", headers={**mine, "Accept": "multipart/related; "
                                                             'type="application/octet-stream"; transfer-syntax=*'})
    assert frames.status_code == 200, frames.text
    records = await trail(audited, owner)
    assert [(r["kind"], r["action"], r["data_flow"], r["actor"]["roles"]) for r in records] == [
        ("INSTANCES_TRANSFERRED", "C", "from-actor", ["clinician"]),  # STOW-RS
        ("QUERY", "E", None, ["patient"]),  # QIDO-RS
        ("INSTANCES_ACCESSED", "R", None, ["patient"]),  # rendered
        ("INSTANCES_TRANSFERRED", "R", "to-actor", ["patient"]),  # frames
    ]
    assert records[0]["studies"][0]["study_uid"] == instance.study_uid
    assert records[1]["query"] == [["PatientID", owner]]
    assert records[3]["studies"][0]["instances"][0][0] == instance.sop_uid
    assert [r["resource"] for r in records[2:]] == [
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered",
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"]
    await until_shipped(rsyslog, owner, 5)
