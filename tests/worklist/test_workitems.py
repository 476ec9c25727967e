"""`/workitems` through the real app against the strict UPS-RS simulator, served by uvicorn, in every profile.

No UPS-RS server can be installed here (shared/upstreams/ups-rs.md); the simulator is tests/ups_simulator.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.worklist.fields import BY_NAME, FIELDS
from tests.conftest import make_settings, running
from tests.support import ups_simulator
from tests.support.exams_support import SECRET, clinician, patient
from tests.support.servers import serve
from tests.support.ups_simulator import IN_PROGRESS, UpsSimulator

PROFILES = ["azure", "dcm4chee", "standard"]
UID_ROOT = "1.2.826.0.1.3680043.10.777"
SEED: dict[str, Any] = {
    "PatientID": "SDJ38WMD1MS01", "PatientName": "MARIO^ROSSI", "ScheduledStationAETitle": "NGV",
    "ScheduledProcedureStepStartDate": "20000101", "ScheduledProcedureStepStartTime": "120000",
    "ScheduledProcedureStepDescription": "Tac", "Modality": "CT", "AccessionNumber": "NDS83JF784N209D2",
}
# The contract page's create example, as it sends it (its own StudyInstanceUID included).
PAGE_CREATE = {"StudyInstanceUID": "1.2.752.24.5.2584605181.20150129083013.816906", **SEED}
REQUIRED = ["PatientID", "PatientName", "ScheduledStationAETitle", "ScheduledProcedureStepDescription",
            "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "Modality", "AccessionNumber"]
# The tags, VRs and nesting of the contract page's GET /workitems response example (Modality Worklist layout).
STEP = "00400100"
PAGE_SHAPE: dict[str, Any] = {
    "00080005": "CS", "00080050": "SH", "00080090": "PN", "00100010": "PN", "00100020": "LO", "00100030": "DA",
    "00100040": "CS", "00102000": "LO", "001021C0": "US", "0020000D": "UI", "00321032": "PN", "00321060": "LO",
    "00380010": "LO", "00380300": "LO", "00380500": "LO",
    STEP: {"00080060": "CS", "00400001": "AE", "00400002": "DA", "00400003": "TM", "00400006": "PN",
           "00400007": "LO", "00400009": "SH", "00400010": "SH"},
    "00401001": "SH", "00402016": "LO", "00403001": "LO",
}
EXTRAS = {"00080018": "UI", "00741000": "CS"}  # the workitem's UID and state, shown beyond the page's example
EVERY_FIELD: dict[str, Any] = {
    **SEED, "ScheduledPerformingPhysiciansName": "VERDI^ANNA", "ScheduledProcedureStepID": "SPS1",
    "RequestedProcedureDescription": "CT head", "RequestedProcedureID": "RP1",
    "RequestingPhysician": "BIANCHI^LUCA", "ReferringPhysicianName": "NERI^PAOLO", "AdmissionID": "ADM1",
    "CurrentPatientLocation": "Ward 3", "PatientBirthDate": "19800229", "PatientSex": "F",
    "ConfidentialityConstraintOnPatientDataDescription": "none", "PatientState": "stable", "PregnancyStatus": 4,
    "MedicalAlerts": "none known", "PlacerOrderNumberImagingServiceRequest": "PO1", "ServiceEpisodeID": "EP1",
    "ScheduledStationName": "CT room 1",
}


def seed(profile: str, **changes: Any) -> dict[str, Any]:
    """The seed body (every profile takes it as is: no birth date needed), with changes; None drops a field."""
    del profile
    body = {**SEED, **changes}
    return {key: value for key, value in body.items() if value is not None}


def shape(dataset: dict[str, Any]) -> dict[str, Any]:
    """Tag -> VR, and for a sequence tag -> the shape of its single item."""
    out: dict[str, Any] = {}
    for tag, element in dataset.items():
        if element["vr"] == "SQ":
            [item] = element["Value"]
            out[tag] = shape(item)
        else:
            out[tag] = element["vr"]
    return out


def assert_mwl_layout(item: dict[str, Any], *extra: str) -> None:
    """Every tag of the page's example with its VR and nesting; beyond it only the workitem's UID and state and
    the given extras."""
    expected = {**PAGE_SHAPE, **EXTRAS}
    got = shape(item)
    assert {tag: got[tag] for tag in got if tag not in extra} == expected
    assert list(item) == sorted(item)  # dicom+json order: ascending tags


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



def mwl_place(item: dict[str, Any], name: str) -> dict[str, Any]:
    """The element of a field in an MWL dataset, found by `worklist_fields.FIELDS`."""
    path = BY_NAME[name].mwl
    holder: dict[str, Any] = item[STEP]["Value"][0] if path[0] == STEP else item
    element: dict[str, Any] = holder[path[-1]]
    return element


def simple(element: dict[str, Any]) -> Any:
    if "Value" not in element:
        return None
    [value] = element["Value"]
    return value["Alphabetic"] if isinstance(value, dict) else value


# --- create ----------------------------------------------------------------------------------------------------------


async def test_the_page_create_example_is_200_in_the_mwl_layout_and_listed_so(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(PAGE_CREATE)
        assert created.status_code == 200, created.text
        item = created.json()
        assert_mwl_layout(item)
        assert item["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
        assert item["0020000D"] == {"vr": "UI", "Value": [PAGE_CREATE["StudyInstanceUID"]]}
        assert item["00080050"] == {"vr": "SH", "Value": ["NDS83JF784N209D2"]}
        assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "MARIO^ROSSI"}]}
        assert item["00100020"] == {"vr": "LO", "Value": ["SDJ38WMD1MS01"]}
        assert item[STEP]["Value"] == [{
            "00080060": {"vr": "CS", "Value": ["CT"]}, "00400001": {"vr": "AE", "Value": ["NGV"]},
            "00400002": {"vr": "DA", "Value": ["20000101"]}, "00400003": {"vr": "TM", "Value": ["120000"]},
            "00400006": {"vr": "PN"}, "00400007": {"vr": "LO", "Value": ["Tac"]}, "00400009": {"vr": "SH"},
            "00400010": {"vr": "SH"},
        }]
        for tag in ("00080090", "00100030", "00100040", "00102000", "001021C0", "00321032", "00321060", "00380010",
                    "00380300", "00380500", "00401001", "00402016", "00403001"):
            assert "Value" not in item[tag], tag  # unknown: present, empty
        assert first(item, "00741000") == "SCHEDULED"
        assert first(item, "00080018") == next(iter(s.ups.workitems))  # the workitem UID, made by the gateway
        assert first(item, "00080018").startswith(UID_ROOT + ".")
        listed = await s.client.get("/workitems", params={"patientID": "SDJ38WMD1MS01"}, headers=clinician())
        assert listed.status_code == 200
        assert listed.json() == [item]
        # What the PACS got: the UPS layout, the values in their UPS places.
        [stored] = s.ups.workitems.values()
        assert first(stored, "00404005") == "20000101120000"
        assert first(stored, "00404025", "00080100") == "NGV"
        assert first(stored, "0040A370", "00080050") == "NDS83JF784N209D2"


async def test_every_field_round_trips_to_its_mwl_place(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(seed(profile, **EVERY_FIELD))
        assert created.status_code == 200, created.text
        item = created.json()
        assert_mwl_layout(item, "00380060")
        for name, value in EVERY_FIELD.items():
            assert simple(mwl_place(item, name)) == value, name
        study = first(item, "0020000D")
        assert study.startswith(UID_ROOT + ".")  # generated when not given
        [stored] = s.ups.workitems.values()
        assert first(stored, "0040A370", "0020000D") == study


async def test_a_second_workitem_for_a_scheduled_study_is_409(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(seed(profile))
        assert created.status_code == 200, created.text
        study = first(created.json(), "0020000D")
        again = await s.create(seed(profile, StudyInstanceUID=study))
        assert again.status_code == 409
        assert again.json()["error"]["details"] == {"StudyInstanceUID": study, "state": "SCHEDULED"}
        s.ups.claim(s.uid_of_study(study))
        busy = await s.create(seed(profile, StudyInstanceUID=study))
        assert busy.status_code == 409
        assert busy.json()["error"]["details"]["state"] == IN_PROGRESS
        assert len(s.ups.workitems) == 1


async def test_azure_takes_a_workitem_without_birth_date_sex_or_admission_and_sends_them_empty() -> None:
    async with stack("azure") as s:
        created = await s.create(SEED)
        assert created.status_code == 200, created.text
        [stored] = s.ups.workitems.values()
        for tag, vr in (("00100030", "DA"), ("00100040", "CS"), ("00380010", "LO"), ("00081080", "LO")):
            assert stored[tag] == {"vr": vr}, tag  # present and empty: nothing made up
        item = created.json()
        for name in ("PatientBirthDate", "PatientSex", "AdmissionID"):
            assert "Value" not in mwl_place(item, name)
        given = await s.create({**SEED, "AccessionNumber": "B2", "PatientBirthDate": "19800101", "PatientSex": "M"})
        assert simple(mwl_place(given.json(), "PatientBirthDate")) == "19800101"
        assert simple(mwl_place(given.json(), "PatientSex")) == "M"


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
        for absent in (None, "", "  "):  # absent, empty, only spaces
            answer = await s.create(seed(profile, **{missing: absent}))
            assert answer.status_code == 400
            assert {"field": missing, "message": "required"} in answer.json()["error"]["details"]["fields"]
        assert s.ups.requests == []


@pytest.mark.parametrize(("field", "sent", "stored"), [
    ("ScheduledProcedureStepStartTime", "12:00:00", "120000"),
    ("ScheduledProcedureStepStartTime", "1200", "120000"),
    ("ScheduledProcedureStepStartTime", "12:00", "120000"),
    ("ScheduledProcedureStepStartTime", "12:00:00.5", "120000.5"),
    ("ScheduledProcedureStepStartTime", "235959.123456", "235959.123456"),
    ("ScheduledProcedureStepStartDate", "2000-01-01", "20000101"),
    ("PatientBirthDate", "1980-02-29", "19800229"),
])
async def test_common_date_and_time_spellings_are_stored_as_da_and_tm(profile: str, field: str, sent: str,
                                                                     stored: str) -> None:
    async with stack(profile) as s:
        created = await s.create(seed(profile, **{field: sent}))
        assert created.status_code == 200, created.text
        assert simple(mwl_place(created.json(), field)) == stored
        [ups] = s.ups.workitems.values()
        if field == "PatientBirthDate":
            assert first(ups, "00100030") == stored
        else:  # the start, one DT for the PACS
            start = {"ScheduledProcedureStepStartDate": "20000101", "ScheduledProcedureStepStartTime": "120000",
                     field: stored}
            assert first(ups, "00404005") == start["ScheduledProcedureStepStartDate"] + start[
                "ScheduledProcedureStepStartTime"]


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("ScheduledProcedureStepStartDate", "20000230", "DA"),
    ("ScheduledProcedureStepStartDate", "2000-13-01", "DA"),
    ("ScheduledProcedureStepStartDate", "2000/01/01", "DA"),
    ("ScheduledProcedureStepStartDate", "2000-0101", "DA"),
    ("ScheduledProcedureStepStartDate", "01-01-2000", "DA"),
    ("PatientBirthDate", "1981-02-29", "DA"),
    ("ScheduledProcedureStepStartTime", "250000", "TM"),
    ("ScheduledProcedureStepStartTime", "25:00", "TM"),
    ("ScheduledProcedureStepStartTime", "12:60", "TM"),
    ("ScheduledProcedureStepStartTime", "12:00:60", "TM"),  # a leap second cannot go into the PACS's DT
    ("ScheduledProcedureStepStartTime", "12:0000", "TM"),
    ("ScheduledProcedureStepStartTime", "1200.5", "TM"),
    ("ScheduledProcedureStepStartTime", "12", "TM"),
    ("ScheduledProcedureStepStartTime", "12:00:00.1234567", "TM"),
    ("ScheduledProcedureStepStartTime", "12h00", "TM"),
    ("ScheduledProcedureStepStartDate", "\uff12\uff10\uff12\uff14-01-01", "DA"),  # full-width digits: not DA
    ("ScheduledProcedureStepStartTime", "\uff11\uff12:00", "TM"),
    ("ScheduledStationAETitle", "A" * 65, "AE"),
    ("PatientName", "A^B^C^D^E^F", "PN"),
    ("PatientID", "PAT*", "LO"),
    # The exact-identifier rule of the searches (gateway.dicom.identifiers): no padding but one trailing space, and no
    # space other than U+0020 nor invisible characters, which another reader would drop or keep.
    ("PatientID", " PAT", "LO"),
    ("PatientID", "PAT  ", "LO"),
    ("PatientID", "PAT\u00a0", "LO"),
    ("PatientID", "\u3000PAT", "LO"),
    ("PatientID", "P\u200bAT", "LO"),
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
            return sorted(first(ds, "00080050") for ds in answer.json())

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


async def test_search_takes_dates_spelled_with_dashes(profile: str) -> None:
    async with stack(profile) as s:
        for accession, date in (("ACC1", "20240101"), ("ACC2", "20240102"), ("ACC3", "20240103")):
            assert (await s.create(seed(profile, AccessionNumber=accession,
                                        ScheduledProcedureStepStartDate=date))).status_code == 200

        async def accessions(value: str) -> list[str]:
            answer = await s.client.get("/workitems", params={"ScheduledProcedureStepStartDate": value},
                                        headers=clinician())
            assert answer.status_code == 200, answer.text
            return sorted(first(ds, "00080050") for ds in answer.json())

        assert await accessions("2024-01-02") == ["ACC2"]
        assert await accessions("2024-01-02-") == ["ACC2", "ACC3"]
        assert await accessions("-2024-01-02") == ["ACC1", "ACC2"]
        assert await accessions("2024-01-01-2024-01-02") == ["ACC1", "ACC2"]
        assert await accessions("20240102-2024-01-03") == ["ACC2", "ACC3"]
        upstream = [query for method, _, query in s.ups.requests if method == "GET"][-1]
        assert "ScheduledProcedureStepStartDateTime=20240102000000-20240103235959" in upstream


@pytest.mark.parametrize("params", [
    {"patientID": ""}, {"patientID": "P*"}, {"patientID": "A,B"}, {"patientID": "A\\B"}, {"patientID": "P?"},
    {"limit": "0"}, {"limit": "201"}, {"offset": "-1"}, {"ScheduledProcedureStepStartDate": "2024"},
    {"ScheduledProcedureStepStartDate": "20240102-20240101"}, {"ScheduledProcedureStepStartDate": "2024/01/02"},
    {"ScheduledProcedureStepStartDate": "2024-01-02-2024-01-01"}, {"ScheduledProcedureStepStartDate": "2024-13-01"},
    {"ScheduledProcedureStepStartDate": "-"}, {"ScheduledProcedureStepStartDate": "2024-01-0"},
    {"ProcedureStepState": "DONE"}, {"AccessionNumber": "A*"}, {"Colour": "blue"}, {"patientID": ["A", "B"]},
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
        assert [first(ds, "00080050") for ds in answer.json()] == ["UPPER"]


async def test_search_pages_count_the_workitems_shown_not_the_cancelled_ones_hidden() -> None:
    async with stack("standard") as s:
        assert (await s.create(seed("standard", AccessionNumber="C"))).status_code == 200
        [template] = s.ups.workitems.values()
        template["00741000"] = {"vr": "CS", "Value": ["CANCELED"]}
        for index in range(250):  # more than one upstream page (200) of cancelled ones, then 3 shown
            copied = copy.deepcopy(template)
            copied["00080018"] = {"vr": "UI", "Value": [f"1.2.3.{index}"]}
            s.ups.workitems[f"1.2.3.{index}"] = copied
        for accession in ("S1", "S2", "S3"):
            assert (await s.create(seed("standard", AccessionNumber=accession))).status_code == 200
        page = await s.client.get("/workitems", params={"limit": "2", "offset": "1"}, headers=clinician())
        assert [first(ds, "00080050") for ds in page.json()] == ["S2", "S3"]


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


# --- delete (cancel) -------------------------------------------------------------------------------------------------


async def test_a_deleted_workitem_is_gone_from_searches_and_its_study_takes_a_new_one(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(PAGE_CREATE)
        study = PAGE_CREATE["StudyInstanceUID"]
        assert created.status_code == 200, created.text
        deleted = await s.client.delete(f"/workitems/{study}", headers=clinician())
        assert deleted.status_code == 204, deleted.text
        assert deleted.content == b""
        listed = await s.client.get("/workitems", params={"patientID": SEED["PatientID"]}, headers=clinician())
        assert listed.json() == []
        cancelled = await s.client.get("/workitems", params={"patientID": SEED["PatientID"],
                                                             "ProcedureStepState": "CANCELED"}, headers=clinician())
        [shown] = cancelled.json()
        assert first(shown, "00741000") == "CANCELED"
        assert first(shown, "0020000D") == study
        again = await s.client.delete(f"/workitems/{study}", headers=clinician())
        assert again.status_code == 404  # removed, as far as the client is concerned
        renewed = await s.create(PAGE_CREATE)
        assert renewed.status_code == 200, renewed.text
        assert first(renewed.json(), "00080018") != first(created.json(), "00080018")
        [current] = (await s.client.get("/workitems", params={"patientID": SEED["PatientID"]},
                                        headers=clinician())).json()
        assert current == renewed.json()
        assert len(s.ups.workitems) == 2  # the PACS keeps the cancelled one


async def test_a_completed_workitem_stays_listed_and_does_not_block_a_new_one(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(PAGE_CREATE)
        study = PAGE_CREATE["StudyInstanceUID"]
        s.ups.complete(s.uid_of_study(study))
        [listed] = (await s.client.get("/workitems", params={"patientID": SEED["PatientID"]},
                                       headers=clinician())).json()
        assert first(listed, "00741000") == "COMPLETED"
        assert first(listed, "00080018") == first(created.json(), "00080018")
        done = await s.client.delete(f"/workitems/{study}", headers=clinician())
        assert done.status_code == 409
        assert "COMPLETED" in done.json()["error"]["message"]
        assert (await s.create(PAGE_CREATE)).status_code == 200


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
        assert again.status_code == 404
        assert len([r for r in s.ups.requests if r[1].endswith("/cancelrequest")]) == 1

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
        assert [first(ds, "00080050") for ds in own.json()] == ["MINE"]

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
    readme = (Path(__file__).resolve().parents[2] / "docs" / "api" / "worklist.md").read_text()
    for field in FIELDS:
        row = (f"| `{field.name}` | {field.vr} | {'yes' if field.required else ''} | {field.destination} | "
               f"{field.mwl_place} |")
        assert row in readme, f"docs/api/worklist.md's table lacks or differs for {field.name}: {row}"
