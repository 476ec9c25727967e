"""`GET /audit-events` through the real app, on SQLite and PostgreSQL: an auditor reads a patient's records oldest
first, filtered by time and paged by cursor to the end; bad parameters are 400 naming the parameter; every other
role is 403 and no token 401; and the auditor role reaches nothing but the trail.

Records are put in the store the way the journal will (`AuditStore.add_many` of rows holding `AuditRecord.to_json`):
recording from the routes is not wired yet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.audit.records import Action, Actor, AlertType, AuditRecord, EventKind, Outcome, Peer
from gateway.store.audit import AuditRow, AuditStore
from gateway.store.db import create_engine
from tests.conftest import make_settings, running
from tests.support.exams_support import SECRET, token

PATIENT, OTHER = "PAT-AUDIT-1", "PAT-AUDIT-2"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def auditor() -> dict[str, str]:
    return {"Authorization": f"Bearer {token('auditor')}"}


def record(n: int, patient_id: str | None, when: float, **overrides: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "kind": EventKind.QUERY, "action": Action.EXECUTE, "outcome": Outcome.SUCCESS,
        "when": datetime.fromtimestamp(when, UTC), "request_id": f"req-{n}",
        "actor": Actor(subject=f"user-{n}", roles=("clinician",), issuer="https://idp.test", address="10.0.0.9"),
        "peer": Peer(user_id="dicom-gateway"), "patient_id": patient_id,
        "resource": f"/exams/studies?PatientId={patient_id}", "query": (("PatientId", patient_id or ""),),
    }
    values.update(overrides)
    return AuditRecord(**values)


def row(audit: AuditRecord, recorded_at: float) -> AuditRow:
    # The subject column is text for the search; the record (ASCII JSON) is what keeps a hostile subject exactly.
    subject = audit.actor.subject.encode("ascii", "backslashreplace").decode()
    return AuditRow(recorded_at=recorded_at, request_id=audit.request_id, event=audit.kind.name.lower(),
                    outcome=int(audit.outcome), patient_id=audit.patient_id, study_uid=None, subject=subject,
                    record=audit.to_json())


@dataclass
class Trail:
    client: httpx.AsyncClient
    store: AuditStore

    async def add(self, *records: tuple[AuditRecord, float]) -> list[int]:
        return await self.store.add_many([row(audit, at) for audit, at in records])

    async def get(self, query: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(f"/audit-events{query}", headers=auditor() if headers is None else headers)


@pytest.fixture
async def trail(database_url: str) -> AsyncIterator[Trail]:
    app = create_app(make_settings(auth_mode="jwt", auth_jwt_secret=SECRET, database_url=database_url))
    async with running(app) as client:  # the lifespan has migrated the store
        engine = create_engine(database_url)
        try:
            yield Trail(client, AuditStore(engine))
        finally:
            await engine.dispose()


async def test_auditor_finds_a_patients_records_oldest_first(trail: Trail) -> None:
    records = [record(0, PATIENT, T0), record(1, OTHER, T0 + 1), record(2, PATIENT, T0 + 2),
               record(3, None, T0 + 3, kind=EventKind.SECURITY_ALERT, outcome=Outcome.MINOR_FAILURE, query=None,
                      alert=AlertType.NODE_AUTHENTICATION, resource="/exams/studies", actor=Actor(subject="")),
               record(4, PATIENT, T0 + 4, kind=EventKind.SECURITY_ALERT, outcome=Outcome.MINOR_FAILURE, query=None,
                      alert=AlertType.USE_OF_RESTRICTED_FUNCTION, outcome_description="another patient")]
    ids = await trail.add(*[(audit, T0 + n + 0.5) for n, audit in enumerate(records)])

    response = await trail.get(f"?PatientId={PATIENT}")

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["next"] is None
    assert [event["id"] for event in body["events"]] == [ids[0], ids[2], ids[4]]
    assert body["events"][0]["recordedAt"] == "2027-01-15T08:00:00.500000Z"
    # Each record is the stored one, whole: it reads back as the record that was written.
    assert [AuditRecord.from_json(json.dumps(event["record"])) for event in body["events"]] == [
        records[0], records[2], records[4]]
    everyone = (await trail.get()).json()
    assert [event["id"] for event in everyone["events"]] == ids  # no PatientId: every record, unnamed ones too


async def test_every_spelling_of_patient_id_is_accepted(trail: Trail) -> None:
    ids = await trail.add((record(0, PATIENT, T0), T0), (record(1, OTHER, T0), T0))
    for spelling in ("PatientId", "patientId", "patientID", "PatientID"):
        response = await trail.get(f"?{spelling}={PATIENT}")
        assert [event["id"] for event in response.json()["events"]] == ids[:1], spelling


async def test_since_and_until_bound_the_time_recorded(trail: Trail) -> None:
    ids = await trail.add(*[(record(n, PATIENT, T0 + 3600 * n), T0 + 3600 * n) for n in range(4)])

    def found(response: httpx.Response) -> list[int]:
        assert response.status_code == 200, response.text
        return [event["id"] for event in response.json()["events"]]

    # since is inclusive, until exclusive: [08:00 + 1 h, 08:00 + 3 h) holds the records of 09:00 and 10:00.
    assert found(await trail.get("?since=2027-01-15T09:00:00Z&until=2027-01-15T11:00:00Z")) == ids[1:3]
    assert found(await trail.get("?since=2027-01-15T10:00:00%2B01:00")) == ids[1:]  # 09:00 UTC: the offset counts
    assert found(await trail.get("?until=2027-01-15")) == []  # a date is its midnight, UTC
    assert found(await trail.get(f"?PatientId={PATIENT}&since=2027-01-15T10:30:00")) == ids[3:]


async def test_pages_follow_next_to_the_end(trail: Trail) -> None:
    ids = await trail.add(*[(record(n, PATIENT if n % 3 else OTHER, T0 + n), T0 + n) for n in range(11)])
    mine = [i for n, i in enumerate(ids) if n % 3]  # 7 records of PATIENT among 11
    seen: list[int] = []
    pages = 0
    link: str | None = f"/audit-events?patientID={PATIENT}&since=2027-01-15T08:00:00Z&limit=3"
    while link is not None:
        response = await trail.client.get(link, headers=auditor())
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["events"]) <= 3
        seen += [event["id"] for event in body["events"]]
        pages += 1
        link = body["next"]
        if link is not None:  # the next page keeps the filters, under the canonical spelling, and the cursor
            assert link.startswith("/audit-events?PatientId=PAT-AUDIT-1&since=2027-01-15T08%3A00%3A00Z&limit=3&after=")
            assert link.endswith(f"&after={seen[-1]}")
    assert seen == mine
    assert pages == 3  # 3 + 3 + 1: the last page says so itself, with no empty page after it

    exact = await trail.get(f"?PatientId={PATIENT}&limit=7")
    assert len(exact.json()["events"]) == 7
    assert exact.json()["next"] is None
    assert (await trail.get(f"?after={ids[-1]}")).json() == {"events": [], "next": None}


async def test_hostile_values_in_a_record_come_back_exactly(trail: Trail) -> None:
    hostile = record(0, PATIENT, T0, resource="/exams/studies?PatientId=\ud800\x00\u202e</x>&", actor=Actor(
        subject="\udc00\ud800 \U0001f600", roles=("clinician",)))
    await trail.add((hostile, T0))

    response = await trail.get()

    assert response.status_code == 200
    assert response.content.isascii()  # as stored: every such character an escape
    assert AuditRecord.from_json(json.dumps(response.json()["events"][0]["record"])) == hostile


@pytest.mark.parametrize(("query", "parameter"), [
    ("?PatientId=PAT*", "PatientId"),
    ("?PatientId=A&patientId=B", "PatientId"),
    ("?PatientId=", "PatientId"),
    ("?since=yesterday", "since"),
    ("?until=2027-13-01", "until"),
    ("?since=2027-01-02&until=2027-01-01", "until"),
    ("?since=2027-01-01&since=2027-01-02", "since"),
    ("?limit=0", "limit"),
    ("?limit=1001", "limit"),
    ("?limit=ten", "limit"),
    ("?after=-1", "after"),
    ("?after=%C2%B2", "after"),  # a superscript two: a digit to str.isdigit, not ASCII
    ("?after=1234567890123456789", "after"),
    ("?after=", "after"),
    ("?offset=10", "offset"),
    ("?StudyInstanceUID=1.2.3", "StudyInstanceUID"),
])
async def test_bad_parameters_are_400_naming_the_parameter(trail: Trail, query: str, parameter: str) -> None:
    response = await trail.get(query)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["parameter"] == parameter


@pytest.mark.parametrize("roles", [("clinician",), ("patient",), ("pacs",), ("clinician", "pacs", "patient")])
async def test_other_roles_are_403(trail: Trail, roles: tuple[str, ...]) -> None:
    await trail.add((record(0, PATIENT, T0), T0))
    headers = {"Authorization": f"Bearer {token(*roles, patient_id=PATIENT)}"}

    response = await trail.get(f"?PatientId={PATIENT}", headers=headers)

    assert response.status_code == 403
    assert response.json()["error"]["details"] == {"required_roles": ["auditor"]}
    assert PATIENT not in response.text


async def test_no_token_is_401(trail: Trail) -> None:
    response = await trail.get(headers={})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/exams/studies?PatientId={PATIENT}"),
    ("POST", "/exams"),
    ("GET", "/uid"),
    ("GET", "/token?studyUID=1.2.3"),
    ("GET", "/dicomweb/studies"),
    ("GET", "/workitems"),
    ("GET", "/new-exam-callback/events"),
    ("POST", "/new-exam-callback"),
])
async def test_an_auditor_reaches_nothing_but_the_trail(trail: Trail, method: str, path: str) -> None:
    response = await trail.client.request(method, path, headers=auditor())

    assert response.status_code == 403, response.text


async def test_without_authentication_every_caller_is_an_auditor(database_url: str) -> None:
    # AUTH_MODE=none is for `make run` (docs/decisions.md): the trail is readable there as everything else is.
    async with running(create_app(make_settings(database_url=database_url))) as client:
        response = await client.get("/audit-events")

    assert response.status_code == 200
    assert response.json() == {"events": [], "next": None}
