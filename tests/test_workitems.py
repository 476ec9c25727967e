"""`/workitems` through the real app against the strict UPS-RS simulator, served by uvicorn, in every profile.

No UPS-RS server can be installed here (shared/upstreams/ups-rs.md); the simulator is tests/ups_simulator.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests import ups_simulator
from tests.conftest import make_settings, running
from tests.exams_support import SECRET, clinician, patient
from tests.servers import serve
from tests.ups_simulator import IN_PROGRESS, UpsSimulator

PROFILES = ["azure", "dcm4chee", "standard"]
UID_ROOT = "1.2.826.0.1.3680043.10.777"
SEED: dict[str, Any] = {
    "PatientID": "SDJ38WMD1MS01", "PatientName": "MARIO^ROSSI", "ScheduledStationAETitle": "NGV",
    "ScheduledProcedureStepStartDate": "20000101", "ScheduledProcedureStepStartTime": "120000",
    "ScheduledProcedureStepDescription": "Tac", "Modality": "CT", "AccessionNumber": "NDS83JF784N209D2",
}
REQUIRED = ["PatientID", "PatientName", "ScheduledStationAETitle", "ScheduledProcedureStepDescription",
            "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "Modality", "AccessionNumber"]


def seed(profile: str, **changes: Any) -> dict[str, Any]:
    """The seed body; Microsoft's service needs a birth date (ups-rs.md), so the azure runs add one."""
    body = {**SEED, **({"PatientBirthDate": "19700101"} if profile == "azure" else {}), **changes}
    return {key: value for key, value in body.items() if value is not None}


class Stack:
    def __init__(self, simulator: UpsSimulator, client: httpx.AsyncClient) -> None:
        self.ups = simulator
        self.client = client

    async def create(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post("/workitems", content=json.dumps(body),
                                      headers={"Content-Type": "application/json", **(headers or clinician())})

    def uid_of_study(self, study_uid: str) -> str:
        [uid] = [uid for uid, ds in self.ups.workitems.items() if ds["0020000D"]["Value"] == [study_uid]]
        return uid


@asynccontextmanager
async def stack(profile: str, **settings: Any) -> AsyncIterator[Stack]:
    simulator = UpsSimulator(profile)
    with serve(simulator.app) as server:
        root = server.url + simulator.base_path.removesuffix("/workitems")
        values: dict[str, Any] = {
            "pacs_service_url": root, "pacs_profile": profile, "auth_mode": "jwt", "auth_jwt_secret": SECRET,
            "dicom_uid_root": UID_ROOT, **settings,
        }
        async with running(create_app(make_settings(**values))) as client:
            yield Stack(simulator, client)


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def contains_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(contains_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(contains_key(v, key) for v in value)
    return False


def first(dataset: dict[str, Any], *path: str) -> Any:
    for tag in path[:-1]:
        dataset = dataset[tag]["Value"][0]
    return dataset[path[-1]]["Value"][0]


# --- create ----------------------------------------------------------------------------------------------------------


async def test_the_seed_creates_a_workitem_that_get_returns_with_the_values_in_their_ups_places(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(seed(profile))
        assert created.status_code == 200, created.text
        item = created.json()
        study = first(item, "0020000D")
        assert study.startswith(UID_ROOT + ".")
        assert first(item, "00080018").startswith(UID_ROOT + ".")  # the workitem UID, made by the gateway
        assert first(item, "00100020") == "SDJ38WMD1MS01"
        assert first(item, "00100010") == {"Alphabetic": "MARIO^ROSSI"}
        assert first(item, "00404005") == "20000101120000"
        assert first(item, "00741204") == "Tac"
        assert first(item, "00741000") == "SCHEDULED"
        assert first(item, "00404025", "00080100") == "NGV"
        assert first(item, "00404026", "00080100") == "CT"
        assert first(item, "0040A370", "00080050") == "NDS83JF784N209D2"
        assert first(item, "0040A370", "0020000D") == study
        assert "00081195" not in item
        listed = await s.client.get("/workitems", params={"patientID": "SDJ38WMD1MS01"}, headers=clinician())
        assert listed.status_code == 200
        assert listed.json() == [item]
        again = await s.create(seed(profile, StudyInstanceUID=study))
        assert again.status_code == 409
        assert again.json()["error"]["details"]["StudyInstanceUID"] == study
        assert len(s.ups.workitems) == 1


async def test_a_given_study_uid_is_kept(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(seed(profile, StudyInstanceUID="1.2.3.4.5.6"))
        assert created.status_code == 200, created.text
        assert first(created.json(), "0020000D") == "1.2.3.4.5.6"


async def test_every_optional_field_lands_in_its_place(profile: str) -> None:
    optional = {
        "ScheduledPerformingPhysiciansName": "VERDI^ANNA", "ScheduledProcedureStepID": "SPS1",
        "RequestedProcedureDescription": "CT head", "RequestedProcedureID": "RP1",
        "RequestingPhysician": "BIANCHI^LUCA", "ReferringPhysicianName": "NERI^PAOLO", "AdmissionID": "ADM1",
        "CurrentPatientLocation": "Ward 3", "PatientBirthDate": "19800229", "PatientSex": "F",
        "ConfidentialityConstraintOnPatientDataDescription": "none",
        "PatientState": "stable", "PregnancyStatus": 4, "MedicalAlerts": "none known",
        "PlacerOrderNumberImagingServiceRequest": "PO1", "ServiceEpisodeID": "EP1", "ScheduledStationName": "CT room 1",
    }
    async with stack(profile) as s:
        created = await s.create(seed(profile, **optional))
        assert created.status_code == 200, created.text
        item = created.json()
        assert first(item, "00404034", "00404037") == {"Alphabetic": "VERDI^ANNA"}
        assert first(item, "00404018", "00080100") == "SPS1"
        assert first(item, "0040A370", "00321060") == "CT head"
        assert first(item, "0040A370", "00401001") == "RP1"
        assert first(item, "0040A370", "00321032") == {"Alphabetic": "BIANCHI^LUCA"}
        assert first(item, "0040A370", "00402016") == "PO1"
        assert first(item, "00080090") == {"Alphabetic": "NERI^PAOLO"}
        assert first(item, "00380010") == "ADM1"
        assert first(item, "00380300") == "Ward 3"
        assert first(item, "00100030") == "19800229"
        assert first(item, "00100040") == "F"
        assert first(item, "00403001") == "none"
        assert first(item, "00380500") == "stable"
        assert first(item, "001021C0") == 4
        assert first(item, "00102000") == "none known"
        assert first(item, "00380060") == "EP1"
        assert first(item, "00404025", "00080104") == "CT room 1"


async def test_azure_takes_the_seed_as_is_with_a_placeholder_birth_date_chosen_by_the_operator() -> None:
    async with stack("azure", worklist_unknown_birth_date="19000101") as s:
        created = await s.create(SEED)
        assert created.status_code == 200, created.text
        item = created.json()
        assert first(item, "00100030") == "19000101"
        assert first(item, "00100020") == "SDJ38WMD1MS01"
        assert first(item, "00404005") == "20000101120000"
        listed = await s.client.get("/workitems", params={"patientID": "SDJ38WMD1MS01"}, headers=clinician())
        assert listed.json() == [item]
        again = await s.create({**SEED, "StudyInstanceUID": first(item, "0020000D")})
        assert again.status_code == 409
        given = await s.create({**SEED, "AccessionNumber": "B2", "PatientBirthDate": "19800101"})
        assert first(given.json(), "00100030") == "19800101"  # a given date always wins


async def test_azure_without_a_birth_date_is_refused_before_the_upstream() -> None:
    async with stack("azure") as s:
        refused = await s.create(SEED)
        assert refused.status_code == 400
        assert refused.json()["error"]["details"]["fields"] == [
            {"field": "PatientBirthDate", "message": "required by this PACS"}]
        assert not [r for r in s.ups.requests if r[0] == "POST"]


async def test_each_dialect_gets_the_workitem_uid_and_body_its_way(profile: str) -> None:
    async with stack(profile) as s:
        assert (await s.create(seed(profile))).status_code == 200
        [(_, path, query)] = [r for r in s.ups.requests if r[0] == "POST"]
        uid = next(iter(s.ups.workitems))
        assert path == s.ups.base_path
        assert query == (uid if profile == "azure" else f"workitem={uid}")


@pytest.mark.parametrize("missing", REQUIRED)
async def test_a_missing_required_field_is_named_and_nothing_reaches_the_upstream(profile: str, missing: str) -> None:
    async with stack(profile) as s:
        answer = await s.create(seed(profile, **{missing: None}))
        assert answer.status_code == 400
        assert {"field": missing, "message": "required"} in answer.json()["error"]["details"]["fields"]
        assert s.ups.requests == []


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("ScheduledProcedureStepStartDate", "20000230", "DA"),
    ("ScheduledProcedureStepStartDate", "2000-01-01", "DA"),
    ("ScheduledProcedureStepStartTime", "250000", "TM"),
    ("ScheduledProcedureStepStartTime", "12:00", "TM"),
    ("ScheduledStationAETitle", "A" * 65, "AE"),
    ("PatientName", "A^B^C^D^E^F", "PN"),
    ("PatientID", "PAT*", "LO"),
    ("Modality", "x" * (1024 * 1024), "CS"),
    ("AccessionNumber", 12345, "string"),
    ("PregnancyStatus", 7, "US"),
])
async def test_an_invalid_value_is_named_and_nothing_reaches_the_upstream(profile: str, field: str, value: Any,
                                                                           fragment: str) -> None:
    async with stack(profile) as s:
        answer = await s.create(seed(profile, **{field: value}))
        assert answer.status_code == 400, answer.text
        [problem] = answer.json()["error"]["details"]["fields"]
        assert problem["field"] == field
        assert fragment in problem["message"]
        assert s.ups.requests == []


@pytest.mark.parametrize(("content", "content_type", "status"), [
    (b"{not json", "application/json", 400),
    (b"[]", "application/json", 400),
    (json.dumps([SEED]).encode(), "application/json", 400),
    (b"", "application/json", 400),
    (b"{}", "application/json", 400),
    (json.dumps(SEED).encode(), "text/plain", 415),
    (b"{" + b" " * (3 * 1024 * 1024) + b"}", "application/json", 413),
])
async def test_bodies_that_are_not_one_json_object(profile: str, content: bytes, content_type: str,
                                                   status: int) -> None:
    async with stack(profile) as s:
        answer = await s.client.post("/workitems", content=content,
                                     headers={"Content-Type": content_type, **clinician()})
        assert answer.status_code == status
        assert set(answer.json()["error"]) == {"code", "message", "details"}
        assert s.ups.requests == []


async def test_a_refusal_by_the_pacs_is_422_with_its_reason_in_each_error_style(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:  # a rule of the real server that the gateway does not know
        raise ups_simulator.UpsReject(400, "Station NGV is closed on Saturdays")

    monkeypatch.setattr(UpsSimulator, "_check_enumerations", staticmethod(refuse))
    monkeypatch.setattr(UpsSimulator, "_check_common_create", refuse)
    async with stack(profile) as s:
        answer = await s.create(seed(profile))
        assert answer.status_code == 422, answer.text
        details = answer.json()["error"]["details"]
        assert details["upstream_status"] == 400
        assert details["upstream_message"] == "Station NGV is closed on Saturdays"
        assert s.ups.workitems == {}


async def test_unknown_fields_are_refused_by_name() -> None:
    async with stack("standard") as s:
        answer = await s.create({**SEED, "Colour": "blue"})
        assert answer.status_code == 400
        assert answer.json()["error"]["details"]["fields"] == [{"field": "Colour", "message": "unknown field"}]


# --- search ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["patientID", "PatientID", "PatientId", "patientId"])
async def test_search_accepts_every_spelling_and_answers_an_empty_list(spelling: str) -> None:
    async with stack("dcm4chee") as s:
        answer = await s.client.get("/workitems", params={spelling: "NOBODY"}, headers=clinician())
        assert answer.status_code == 200
        assert answer.json() == []


async def test_search_filters(profile: str) -> None:
    async with stack(profile) as s:
        rows = [("ACC1", "20240101", "P1"), ("ACC2", "20240102", "P1"), ("ACC3", "20240103", "P2")]
        for accession, date, pid in rows:
            created = await s.create(seed(profile, AccessionNumber=accession, ScheduledProcedureStepStartDate=date,
                                          PatientID=pid))
            assert created.status_code == 200, created.text

        async def accessions(**params: str) -> list[str]:
            answer = await s.client.get("/workitems", params=params, headers=clinician())
            assert answer.status_code == 200, answer.text
            return sorted(first(ds, "0040A370", "00080050") for ds in answer.json())

        assert await accessions(patientID="P1") == ["ACC1", "ACC2"]
        assert await accessions() == ["ACC1", "ACC2", "ACC3"]  # a clinician may omit the patient
        assert await accessions(AccessionNumber="ACC2") == ["ACC2"]
        assert await accessions(ScheduledProcedureStepStartDate="20240102") == ["ACC2"]
        assert await accessions(ScheduledProcedureStepStartDate="20240102-") == ["ACC2", "ACC3"]
        assert await accessions(ScheduledProcedureStepStartDate="-20240102") == ["ACC1", "ACC2"]
        assert await accessions(ScheduledProcedureStepStartDate="20240101-20240102", patientID="P1") == ["ACC1", "ACC2"]
        assert await accessions(ProcedureStepState="SCHEDULED", patientID="P2") == ["ACC3"]
        assert await accessions(ProcedureStepState="COMPLETED") == []
        assert len(await accessions(limit="2")) == 2
        assert len(await accessions(limit="2", offset="2")) == 1


@pytest.mark.parametrize("params", [
    {"patientID": ""}, {"patientID": "P*"}, {"patientID": "A,B"}, {"patientID": "A\\B"}, {"patientID": "P?"},
    {"limit": "0"}, {"limit": "201"}, {"offset": "-1"}, {"ScheduledProcedureStepStartDate": "2024"},
    {"ScheduledProcedureStepStartDate": "20240102-20240101"}, {"ProcedureStepState": "DONE"},
    {"AccessionNumber": "A*"}, {"Colour": "blue"}, {"patientID": ["A", "B"]},
])
async def test_search_refuses_bad_parameters(profile: str, params: dict[str, Any]) -> None:
    async with stack(profile) as s:
        answer = await s.client.get("/workitems", params=params, headers=clinician())
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["details"]["parameter"]
        assert s.ups.requests == []


async def test_search_returns_only_exact_patient_matches_whatever_the_pacs_matches() -> None:
    # Microsoft's service compares case-insensitively: a search for ABC also finds abc's workitems.
    async with stack("azure") as s:
        assert (await s.create(seed("azure", PatientID="ABC", AccessionNumber="UPPER"))).status_code == 200
        assert (await s.create(seed("azure", PatientID="abc", AccessionNumber="LOWER"))).status_code == 200
        answer = await s.client.get("/workitems", params={"patientID": "ABC"}, headers=clinician())
        assert [first(ds, "0040A370", "00080050") for ds in answer.json()] == ["UPPER"]


@pytest.mark.parametrize("pacs_leaks_it", [False, True])
async def test_the_transaction_uid_never_leaves_the_gateway(profile: str, pacs_leaks_it: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if pacs_leaks_it:  # a PACS that returns the lock in searches (the standard says it must not)
        monkeypatch.setattr(ups_simulator, "without_transaction_uid", lambda dataset: dataset)
    async with stack(profile) as s:
        created = await s.create(seed(profile))
        uid = first(created.json(), "00080018")
        lock = s.ups.claim(uid)
        answer = await s.client.get("/workitems", params={"patientID": SEED["PatientID"]}, headers=clinician())
        assert answer.status_code == 200
        assert first(answer.json()[0], "00741000") == IN_PROGRESS
        assert lock not in answer.text
        assert not contains_key(answer.json(), "00081195")
        if pacs_leaks_it:
            direct = ups_simulator.without_transaction_uid(s.ups.workitems[uid])
            assert first(direct, "00081195") == lock  # the leak is real, and the gateway removed it


# --- cancel ----------------------------------------------------------------------------------------------------------


async def test_cancel_scheduled_in_progress_done_and_missing(profile: str) -> None:
    async with stack(profile, pacs_requester_aet="GWTEST") as s:
        studies = []
        for accession in ("A1", "A2", "A3"):
            created = await s.create(seed(profile, AccessionNumber=accession))
            studies.append(first(created.json(), "0020000D"))
        scheduled, claimed, completed = studies
        s.ups.claim(s.uid_of_study(claimed))
        s.ups.complete(s.uid_of_study(completed))

        answer = await s.client.delete(f"/workitems/{scheduled}", headers=clinician())
        assert answer.status_code == 204, answer.text
        assert s.ups.state(s.uid_of_study(scheduled)) == "CANCELED"
        cancel = [r for r in s.ups.requests if r[1].endswith("/cancelrequest")]
        assert len(cancel) == 1
        assert cancel[0][2] == ("requester=GWTEST" if profile == "dcm4chee" else "")

        again = await s.client.delete(f"/workitems/{scheduled}", headers=clinician())
        assert again.status_code == 409
        assert "CANCELED" in again.json()["error"]["message"]

        busy = await s.client.delete(f"/workitems/{claimed}", headers=clinician())
        assert busy.status_code == 409
        assert "IN PROGRESS" in busy.json()["error"]["message"]
        assert "performer" in busy.json()["error"]["message"]
        assert s.ups.state(s.uid_of_study(claimed)) == IN_PROGRESS

        done = await s.client.delete(f"/workitems/{completed}", headers=clinician())
        assert done.status_code == 409
        assert "COMPLETED" in done.json()["error"]["message"]

        missing = await s.client.delete("/workitems/1.2.3.999", headers=clinician())
        assert missing.status_code == 404
        bad = await s.client.delete("/workitems/not-a-uid", headers=clinician())
        assert bad.status_code == 400


# --- who may do what -------------------------------------------------------------------------------------------------


async def test_a_patient_works_only_on_their_own_workitems(profile: str) -> None:
    async with stack(profile) as s:
        mine = await s.create(seed(profile, PatientID="ME", AccessionNumber="MINE"), headers=patient("ME"))
        assert mine.status_code == 200, mine.text
        theirs = await s.create(seed(profile, PatientID="OTHER", AccessionNumber="THEIRS"))
        assert theirs.status_code == 200
        before = len(s.ups.requests)

        refused = await s.create(seed(profile, PatientID="OTHER"), headers=patient("ME"))
        assert refused.status_code == 403
        listed = await s.client.get("/workitems", params={"patientID": "OTHER"}, headers=patient("ME"))
        assert listed.status_code == 403
        assert len(s.ups.requests) == before  # neither reached the PACS

        own = await s.client.get("/workitems", headers=patient("ME"))
        assert [first(ds, "0040A370", "00080050") for ds in own.json()] == ["MINE"]

        other_study = first(theirs.json(), "0020000D")
        hidden = await s.client.delete(f"/workitems/{other_study}", headers=patient("ME"))
        assert hidden.status_code == 404  # the same answer as for a study with no workitem
        assert s.ups.state(s.uid_of_study(other_study)) == "SCHEDULED"
        cancelled = await s.client.delete(f"/workitems/{first(mine.json(), '0020000D')}", headers=patient("ME"))
        assert cancelled.status_code == 204


async def test_no_token_is_401(profile: str) -> None:
    async with stack(profile) as s:
        assert (await s.client.get("/workitems")).status_code == 401
        assert (await s.client.post("/workitems", json=SEED)).status_code == 401
        assert (await s.client.delete("/workitems/1.2.3")).status_code == 401


async def test_orthanc_has_no_worklist_and_says_which_setting_to_change() -> None:
    async with stack("standard", pacs_profile="orthanc") as s:
        for answer in (
            await s.create(SEED),
            await s.client.get("/workitems", params={"patientID": "X"}, headers=clinician()),
            await s.client.delete("/workitems/1.2.3", headers=clinician()),
        ):
            assert answer.status_code == 501
            assert "PACS_PROFILE" in answer.json()["error"]["message"]
            assert answer.json()["error"]["details"]["setting"] == "PACS_PROFILE"
        assert s.ups.requests == []


def test_the_readme_shows_the_mapping_table_of_the_code() -> None:
    from pathlib import Path

    from gateway.worklist_fields import FIELDS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for field in FIELDS:
        row = f"| `{field.name}` | {field.vr} | {'yes' if field.required else ''} | {field.destination} |"
        assert row in readme, f"README's worklist table lacks or differs for {field.name}: {row}"
