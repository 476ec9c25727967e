"""The UPS-RS simulator itself: each profile accepts what its real server accepts and rejects the rest, with the
real server's status codes and error style (see /work/shared/upstreams/ups-rs.md and tests/ups_simulator.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ups_simulator import (
    ACCESSION_NUMBER,
    ADMISSION_ID,
    ADMITTING_DIAGNOSES_DESCRIPTION,
    CANCELED,
    CODE_MEANING,
    COMPLETED,
    DICOM_JSON,
    IN_PROGRESS,
    INPUT_INFORMATION_SEQUENCE,
    INPUT_READINESS_STATE,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    PATIENT_SEX,
    PERFORMED_PROCEDURE_STEP_END_DATETIME,
    PERFORMED_PROCEDURE_STEP_START_DATETIME,
    PROCEDURE_STEP_LABEL,
    PROCEDURE_STEP_STATE,
    PROFILES,
    REFERENCED_REQUEST_SEQUENCE,
    SCHEDULED,
    SCHEDULED_PROCEDURE_STEP_PRIORITY,
    SCHEDULED_PROCEDURE_STEP_START_DATETIME,
    SCHEDULED_STATION_NAME_CODE_SEQUENCE,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    TRANSACTION_UID,
    TYPE_OF_INSTANCES,
    UPS_PERFORMED_PROCEDURE_SEQUENCE,
    UPS_SOP_CLASS_UID,
    WORKLIST_LABEL,
    Dataset,
    UpsSimulator,
    dt_bounds,
    element,
    first_text,
    new_uid,
    parse_attribute_path,
    parse_range,
    valid_workitem,
)

AZURE_EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "contracts" / "ups-rs" / "azure-create-example.json"
JSON_HEADERS = {"content-type": DICOM_JSON}
ALREADY_CANCELED = "The UPS is already in the requested state of CANCELED."


@asynccontextmanager
async def client_for(sim: UpsSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app), base_url="http://testserver") as client:
        yield client


def body_for(profile: str, dataset: Any) -> str:
    return json.dumps([dataset] if profile == "azure" else dataset)


def create_url(sim: UpsSimulator, uid: str | None) -> str:
    if uid is None:
        return sim.base_path
    return f"{sim.base_path}?{uid}" if sim.profile == "azure" else f"{sim.base_path}?workitem={uid}"


async def create(client: httpx.AsyncClient, sim: UpsSimulator, uid: str | None, dataset: Dataset) -> httpx.Response:
    return await client.post(create_url(sim, uid), content=body_for(sim.profile, dataset), headers=JSON_HEADERS)


async def create_valid(client: httpx.AsyncClient, sim: UpsSimulator, patient_id: str = "PAT-1",
                       study_uid: str = "1.2.826.0.1.3680043.2.1125.1", **kwargs: Any) -> str:
    uid = new_uid()
    response = await create(client, sim, uid, valid_workitem(sim.profile, patient_id, study_uid, **kwargs))
    assert response.status_code == 201, (response.status_code, response.text, response.headers.get("warning"))
    return uid


def assert_rejected(sim: UpsSimulator, response: httpx.Response, status: int, fragment: str = "") -> None:
    """The status, and the error in the style of the real server: Azure a JSON string, the others a Warning."""
    assert response.status_code == status, (response.status_code, response.text, response.headers.get("warning"))
    if sim.profile == "azure":
        assert response.headers["content-type"].startswith("application/json")
        message = response.json()
        assert isinstance(message, str)
        assert fragment in message
    else:
        assert response.content == b""
        warning = response.headers["warning"]
        assert warning.startswith(f"299 http://testserver{sim.base_path}: ")
        assert fragment in warning


def azure_example() -> Any:
    if not AZURE_EXAMPLE.is_file():
        pytest.skip(f"{AZURE_EXAMPLE} is not available")
    return json.loads(AZURE_EXAMPLE.read_text())


# --- construction -------------------------------------------------------------------------------------------------


def test_profiles_and_base_paths() -> None:
    assert {profile: UpsSimulator(profile).base_path for profile in PROFILES} == {
        "azure": "/v2/workitems",
        "dcm4chee": "/dcm4chee-arc/aets/DCM4CHEE/rs/workitems",
        "standard": "/dicom-web/workitems",
    }
    with pytest.raises(ValueError, match="unknown UPS-RS profile"):
        UpsSimulator("orthanc")
    with pytest.raises(ValueError, match="unknown UPS-RS profile"):
        valid_workitem("orthanc", "P", "1.2.3")


def test_valid_workitem_shapes() -> None:
    dcm = valid_workitem("dcm4chee", "P", "1.2.3", accession_number="A1")
    assert SOP_INSTANCE_UID not in dcm
    assert TRANSACTION_UID not in dcm
    assert dcm[REFERENCED_REQUEST_SEQUENCE]["Value"][0][ACCESSION_NUMBER] == element("SH", "A1")
    azure = valid_workitem("azure", "P", "1.2.3", workitem_uid="1.2.3.9")
    assert azure[TRANSACTION_UID] == {"vr": "UI"}
    assert azure[SOP_INSTANCE_UID] == element("UI", "1.2.3.9")
    assert azure[PATIENT_BIRTH_DATE] == {"vr": "DA"}
    assert TYPE_OF_INSTANCES not in azure
    standard = valid_workitem("standard", "P", "1.2.3")
    assert TYPE_OF_INSTANCES not in standard
    assert standard[WORKLIST_LABEL] == element("LO", "WORKLIST")
    assert standard[STUDY_INSTANCE_UID] == element("UI", "1.2.3")


def test_date_time_helpers() -> None:
    assert dt_bounds("2021") is not None
    assert dt_bounds("20211202115531.193") is not None
    assert dt_bounds("20211202115531.193+0100") is not None
    for bad in ("2021120", "20211302", "20210230", "20211202256000", "202112021155.1", "x"):
        assert dt_bounds(bad) is None, bad
    low, high = parse_range("20240101-20240102") or (None, None)
    assert low is not None
    assert high is not None
    assert (low.day, high.day, high.hour) == (1, 2, 23)
    assert parse_range("-") is None
    assert parse_range("20240101-") is not None
    assert parse_range("-20240101") is not None
    assert parse_attribute_path("ReferencedRequestSequence.AccessionNumber") == ("0040A370", "00080050")
    assert parse_attribute_path("0040a370.00080050") == ("0040A370", "00080050")
    assert parse_attribute_path("NoSuchKeyword") is None


# --- create: accepted ---------------------------------------------------------------------------------------------


async def test_azure_accepts_microsofts_example_body() -> None:
    sim = UpsSimulator("azure")
    uid = "1.2.826.0.1.3680043.2.1125.42"
    async with client_for(sim) as client:
        response = await client.post(f"{sim.base_path}?{uid}", content=json.dumps(azure_example()),
                                     headers=JSON_HEADERS)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == f"http://testserver/v2/workitems/{uid}"
        assert response.headers["content-location"] == response.headers["location"]
        assert response.content == b""
        stored = sim.workitems[uid]
        # The server's own attributes, whatever the body said (the example says WorklistLabel "WORKLIST").
        assert first_text(stored, WORKLIST_LABEL) == "worklist"
        assert first_text(stored, SOP_CLASS_UID) == UPS_SOP_CLASS_UID
        assert first_text(stored, SOP_INSTANCE_UID) == uid
        assert first_text(stored, PROCEDURE_STEP_STATE) == SCHEDULED
        assert stored[TRANSACTION_UID] == {"vr": "UI"}
        assert TYPE_OF_INSTANCES in stored  # "0040e020" in the example: tags are case-insensitive
        retrieved = await client.get(f"{sim.base_path}/{uid}", headers={"accept": DICOM_JSON})
        assert retrieved.status_code == 200
        assert retrieved.headers["content-type"] == DICOM_JSON
        [dataset] = retrieved.json()
        assert TRANSACTION_UID not in dataset
        assert first_text(dataset, PATIENT_ID) == "11111"


async def test_azure_takes_the_uid_from_the_body_when_the_query_has_none() -> None:
    sim = UpsSimulator("azure")
    example = azure_example()
    example[0][SOP_INSTANCE_UID] = element("UI", "1.2.3.4.5")
    async with client_for(sim) as client:
        response = await client.post(sim.base_path, content=json.dumps(example), headers=JSON_HEADERS)
        assert response.status_code == 201, response.text
        assert "1.2.3.4.5" in sim.workitems
        mismatch = await client.post(f"{sim.base_path}?1.2.3.4.6", content=json.dumps(example),
                                     headers=JSON_HEADERS)
        assert_rejected(sim, mismatch, 400, "does not match")
        same = await client.post(f"{sim.base_path}?1.2.3.4.5", content=json.dumps(example), headers=JSON_HEADERS)
        assert_rejected(sim, same, 409, "already exists")


@pytest.mark.parametrize("profile", PROFILES)
async def test_minimal_valid_body_is_accepted(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        uid = await create_valid(client, sim, patient_id="PAT-7", accession_number="ACC-7")
        stored = sim.workitems[uid]
        assert first_text(stored, SOP_CLASS_UID) == UPS_SOP_CLASS_UID
        assert first_text(stored, SOP_INSTANCE_UID) == uid
        assert stored[TRANSACTION_UID] == {"vr": "UI"}
        response = await client.get(f"{sim.base_path}/{uid}")
        assert response.status_code == 200
        [dataset] = response.json()
        assert TRANSACTION_UID not in dataset
        assert first_text(dataset, PATIENT_ID) == "PAT-7"
        assert first_text(dataset, PROCEDURE_STEP_STATE) == SCHEDULED
        assert sim.requests[0] == ("POST", sim.base_path, create_url(sim, uid).partition("?")[2])
        assert sim.requests[1] == ("GET", f"{sim.base_path}/{uid}", "")


async def test_dcm4chee_accepts_an_array_and_makes_up_a_uid() -> None:
    sim = UpsSimulator("dcm4chee")
    dataset = valid_workitem("dcm4chee", "P", "1.2.3")
    async with client_for(sim) as client:
        response = await client.post(sim.base_path, content=json.dumps([dataset]), headers=JSON_HEADERS)
        assert response.status_code == 201
        uid = response.headers["location"].rsplit("/", 1)[1]
        assert uid in sim.workitems
        assert uid.startswith("2.25.")
        # Azure's way of giving the UID is just an unknown query key to dcm4chee: ignored, a UID is made up.
        response = await client.post(f"{sim.base_path}?1.2.3.77", content=json.dumps(dataset), headers=JSON_HEADERS)
        assert response.status_code == 201
        assert "1.2.3.77" not in sim.workitems


async def test_dcm4chee_needs_no_type_2_attributes_and_fills_in_the_worklist_label() -> None:
    sim = UpsSimulator("dcm4chee")
    dataset = {
        SCHEDULED_PROCEDURE_STEP_PRIORITY: element("CS", "LOW"),
        PROCEDURE_STEP_LABEL: element("LO", "label"),
        SCHEDULED_PROCEDURE_STEP_START_DATETIME: element("DT", "20240101"),
        INPUT_READINESS_STATE: element("CS", "INCOMPLETE"),
        PROCEDURE_STEP_STATE: element("CS", SCHEDULED),
        SOP_INSTANCE_UID: element("UI"),  # present but empty: create-iod.xml's Type 0 only refuses a value
    }
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.1", dataset)
        assert response.status_code == 201, response.headers.get("warning")
        assert first_text(sim.workitems["1.2.3.1"], WORKLIST_LABEL) == "DCM4CHEE"


async def test_azure_overwrites_state_and_worklist_label() -> None:
    sim = UpsSimulator("azure")
    dataset = valid_workitem("azure", "P", "1.2.3")
    dataset[PROCEDURE_STEP_STATE] = element("CS", IN_PROGRESS)
    dataset[WORKLIST_LABEL] = element("LO", "MINE")
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.2", dataset)
        assert response.status_code == 201, response.text
    assert sim.state("1.2.3.2") == SCHEDULED
    assert first_text(sim.workitems["1.2.3.2"], WORKLIST_LABEL) == "worklist"


async def test_standard_takes_the_uid_from_the_body_and_defaults_an_empty_worklist_label() -> None:
    sim = UpsSimulator("standard")
    dataset = valid_workitem("standard", "P", "1.2.3", workitem_uid="1.2.3.3")
    dataset[WORKLIST_LABEL] = element("LO")
    async with client_for(sim) as client:
        response = await create(client, sim, None, dataset)
        assert response.status_code == 201, response.headers.get("warning")
    assert first_text(sim.workitems["1.2.3.3"], WORKLIST_LABEL) == "WORKLIST"


# --- create: rejected ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
async def test_create_needs_dicom_json(profile: str) -> None:
    sim = UpsSimulator(profile)
    body = body_for(profile, valid_workitem(profile, "P", "1.2.3"))
    async with client_for(sim) as client:
        for content_type in ("application/json", "application/dicom+xml", "text/plain"):
            response = await client.post(create_url(sim, "1.2.3.4"), content=body,
                                         headers={"content-type": content_type})
            assert_rejected(sim, response, 415, "Content-Type")
        response = await client.post(create_url(sim, "1.2.3.4"), content=body,
                                     headers={"content-type": f"{DICOM_JSON}; charset=utf-8"})
        assert response.status_code == 201
    assert list(sim.workitems) == ["1.2.3.4"]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        pytest.param(lambda ds: ds.update({PATIENT_ID: element("PN", {"Alphabetic": "X"})}), "does not match",
                     id="vr-mismatch"),
        pytest.param(lambda ds: ds.update({PATIENT_ID: {"Value": ["X"]}}), "vr", id="no-vr"),
        pytest.param(lambda ds: ds.update({PATIENT_ID: {"vr": "LO", "Value": "X"}}), "JSON array", id="value-not-list"),
        pytest.param(lambda ds: ds.update({PATIENT_ID: {"vr": "LO", "Value": ["X"], "value": 1}}), "unexpected",
                     id="extra-member"),
        pytest.param(lambda ds: ds.update({PATIENT_NAME: element("PN", "Doe^John")}), "PN", id="pn-not-object"),
        pytest.param(lambda ds: ds.update({SCHEDULED_PROCEDURE_STEP_START_DATETIME: element("DT", "2024-01-01")}),
                     "date-time", id="bad-dt"),
        pytest.param(lambda ds: ds.update({STUDY_INSTANCE_UID: element("UI", "1.2.abc")}), "UID", id="bad-uid"),
        pytest.param(lambda ds: ds.update({"0010002": element("LO", "X")}), "not a DICOM tag", id="bad-tag"),
    ],
)
async def test_malformed_dicom_json_is_rejected(profile: str, mutate: Callable[[Dataset], None],
                                                fragment: str) -> None:
    sim = UpsSimulator(profile)
    dataset = valid_workitem(profile, "P", "1.2.3")
    mutate(dataset)
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.4", dataset)
    assert_rejected(sim, response, 400, fragment)
    assert sim.workitems == {}


async def test_a_tag_given_twice_in_different_case_is_rejected() -> None:
    sim = UpsSimulator("standard")
    body = body_for("standard", valid_workitem("standard", "P", "1.2.3"))
    body = body[:-1] + ', "0010002a": {"vr": "LO"}, "0010002A": {"vr": "LO"}}'
    async with client_for(sim) as client:
        response = await client.post(create_url(sim, "1.2.3.4"), content=body, headers=JSON_HEADERS)
    assert_rejected(sim, response, 400, "twice")


@pytest.mark.parametrize("profile", PROFILES)
async def test_create_rejects_invalid_json_and_duplicates(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        response = await client.post(create_url(sim, "1.2.3.4"), content=b"{not json", headers=JSON_HEADERS)
        assert_rejected(sim, response, 400, "JSON")
        await create_valid(client, sim)
        uid = next(iter(sim.workitems))
        again = await create(client, sim, uid, valid_workitem(profile, "P", "1.2.3"))
        assert_rejected(sim, again, 409, "already exists")


def _drop(tag: str) -> Callable[[Dataset], None]:
    return lambda ds: ds.pop(tag)


def _set(tag: str, value: dict[str, Any]) -> Callable[[Dataset], None]:
    return lambda ds: ds.update({tag: value})


def _first_item(sequence: str, mutate: Callable[[Dataset], None]) -> Callable[[Dataset], None]:
    return lambda ds: mutate(ds[sequence]["Value"][0])


AZURE_REJECTIONS = [
    pytest.param(_drop(PATIENT_NAME), "(0010,0010)", id="type2-patient-name-absent"),
    pytest.param(_drop(REFERENCED_REQUEST_SEQUENCE), "(0040,A370)", id="type2-request-sequence-absent"),
    pytest.param(_drop(UPS_PERFORMED_PROCEDURE_SEQUENCE), "(0074,1216)", id="type2-performed-sequence-absent"),
    pytest.param(_drop(PATIENT_BIRTH_DATE), "(0010,0030)", id="type2-birth-date-absent"),
    pytest.param(_drop(PATIENT_SEX), "(0010,0040)", id="type2-sex-absent"),
    pytest.param(_drop(ADMISSION_ID), "(0038,0010)", id="type2-admission-id-absent"),
    pytest.param(_drop(ADMITTING_DIAGNOSES_DESCRIPTION), "(0008,1080)", id="type2-admitting-diagnoses-absent"),
    pytest.param(_set(TRANSACTION_UID, element("UI", "1.2.3")), "(0008,1195)", id="transaction-uid-has-value"),
    pytest.param(_drop(TRANSACTION_UID), "(0008,1195)", id="transaction-uid-absent"),
    pytest.param(_drop(PROCEDURE_STEP_LABEL), "(0074,1204)", id="label-absent"),
    pytest.param(_set(PROCEDURE_STEP_LABEL, element("LO")), "(0074,1204)", id="label-empty"),
    pytest.param(_set(INPUT_INFORMATION_SEQUENCE, element("SQ", {TYPE_OF_INSTANCES: element("CS", "DICOM")})),
                 "(0008,1199)", id="input-item-without-referenced-sop-sequence"),
    pytest.param(_first_item(REFERENCED_REQUEST_SEQUENCE, lambda item: item.pop(STUDY_INSTANCE_UID)), "(0020,000D)",
                 id="request-item-without-study"),
    pytest.param(_first_item(REFERENCED_REQUEST_SEQUENCE, lambda item: item.pop(ACCESSION_NUMBER)), "(0008,0050)",
                 id="request-item-without-accession"),
    pytest.param(_set(SCHEDULED_STATION_NAME_CODE_SEQUENCE, element("SQ", {"00080100": element("SH", "X")})),
                 CODE_MEANING[:4], id="code-item-without-meaning"),
]


@pytest.mark.parametrize(("mutate", "fragment"), AZURE_REJECTIONS)
async def test_azure_create_rejections(mutate: Callable[[Dataset], None], fragment: str) -> None:
    sim = UpsSimulator("azure")
    dataset = valid_workitem("azure", "P", "1.2.3")
    mutate(dataset)
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.4", dataset)
    assert_rejected(sim, response, 400, fragment)
    assert sim.workitems == {}


async def test_azure_takes_the_four_type_2_attributes_present_and_empty() -> None:
    # PatientBirthDate, PatientSex, AdmissionID, AdmittingDiagnosesDescription: RequirementCode.TwoTwo (ups-rs.md).
    sim = UpsSimulator("azure")
    dataset = valid_workitem("azure", "P", "1.2.3")
    for tag in (PATIENT_BIRTH_DATE, PATIENT_SEX, ADMISSION_ID, ADMITTING_DIAGNOSES_DESCRIPTION):
        assert "Value" not in dataset[tag]
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.4", dataset)
    assert response.status_code == 201, response.text
    assert sim.workitems["1.2.3.4"][PATIENT_BIRTH_DATE] == {"vr": "DA"}


async def test_azure_asks_nothing_outside_table_cc_2_5_3_and_no_enumerated_values() -> None:
    # No top-level TypeOfInstances / ReferencedSOPSequence (the validator's requirement set has neither), and any CS
    # value for priority and input readiness (Microsoft's E2E fixtures send random ones).
    sim = UpsSimulator("azure")
    dataset = valid_workitem("azure", "P", "1.2.3", priority="URGENT", input_readiness="MAYBE")
    assert TYPE_OF_INSTANCES not in dataset
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.4", dataset)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("profile", PROFILES)
async def test_a_study_takes_a_new_workitem_after_its_first_is_cancelled(profile: str) -> None:
    # UPS-RS keys workitems by their own UID: no server refuses a second one for the same study, cancelled or not.
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        first_uid = await create_valid(client, sim, study_uid="1.2.840.5")
        sim.cancel(first_uid)
        second_uid = await create_valid(client, sim, study_uid="1.2.840.5")
        assert second_uid != first_uid
        again = await create(client, sim, second_uid, valid_workitem(profile, "P", "1.2.840.5"))
        assert_rejected(sim, again, 409, "already exists")
        assert sorted(uids_of(await search(client, sim, {"StudyInstanceUID": "1.2.840.5"}))) == sorted(
            [first_uid, second_uid])


async def test_azure_create_body_and_uid_rules() -> None:
    sim = UpsSimulator("azure")
    dataset = valid_workitem("azure", "P", "1.2.3")
    async with client_for(sim) as client:
        as_object = await client.post(f"{sim.base_path}?1.2.3.4", content=json.dumps(dataset), headers=JSON_HEADERS)
        assert_rejected(sim, as_object, 400, "JSON array")
        two = await client.post(f"{sim.base_path}?1.2.3.4", content=json.dumps([dataset, dataset]),
                                headers=JSON_HEADERS)
        assert_rejected(sim, two, 400, "exactly one")
        no_uid = await create(client, sim, None, dataset)
        assert_rejected(sim, no_uid, 400, "(0008,0018)")
        # The first query key is the UID: the standard's ?workitem= is not understood.
        named = await client.post(f"{sim.base_path}?workitem=1.2.3.4", content=json.dumps([dataset]),
                                  headers=JSON_HEADERS)
        assert_rejected(sim, named, 400, "'workitem'")
    assert sim.workitems == {}


DCM4CHEE_REJECTIONS = [
    pytest.param(_set(SOP_INSTANCE_UID, element("UI", "1.2.3.4")), "(0008,0018)", id="sop-instance-uid"),
    pytest.param(_set(SOP_CLASS_UID, element("UI", UPS_SOP_CLASS_UID)), "(0008,0016)", id="sop-class-uid"),
    pytest.param(_set(PROCEDURE_STEP_STATE, element("CS", IN_PROGRESS)), "not SCHEDULED", id="state-in-progress"),
    pytest.param(_drop(PROCEDURE_STEP_STATE), "not SCHEDULED", id="state-absent"),
    pytest.param(_drop(PROCEDURE_STEP_LABEL), "Missing Attribute (0074,1204)", id="label-absent"),
    pytest.param(_set(PROCEDURE_STEP_LABEL, element("LO")), "Missing Attribute Value (0074,1204)", id="label-empty"),
    pytest.param(_drop(SCHEDULED_PROCEDURE_STEP_START_DATETIME), "(0040,4005)", id="start-absent"),
    pytest.param(_set(SCHEDULED_PROCEDURE_STEP_PRIORITY, element("CS", "URGENT")), "Invalid Attribute Value",
                 id="bad-priority"),
    pytest.param(_set(INPUT_READINESS_STATE, element("CS", "MAYBE")), "(0040,4041)", id="bad-readiness"),
]


@pytest.mark.parametrize(("mutate", "fragment"), DCM4CHEE_REJECTIONS)
async def test_dcm4chee_create_rejections(mutate: Callable[[Dataset], None], fragment: str) -> None:
    sim = UpsSimulator("dcm4chee")
    dataset = valid_workitem("dcm4chee", "P", "1.2.3")
    mutate(dataset)
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.4", dataset)
    assert_rejected(sim, response, 400, fragment)
    assert sim.workitems == {}


async def test_dcm4chee_rejects_an_array_of_two() -> None:
    sim = UpsSimulator("dcm4chee")
    dataset = valid_workitem("dcm4chee", "P", "1.2.3")
    async with client_for(sim) as client:
        response = await client.post(sim.base_path, content=json.dumps([dataset, dataset]), headers=JSON_HEADERS)
    assert_rejected(sim, response, 400, "exactly one")


STANDARD_REJECTIONS = [
    pytest.param(_set(INPUT_INFORMATION_SEQUENCE, element("SQ", {TYPE_OF_INSTANCES: element("CS", "DICOM")})),
                 "(0008,1199)", id="input-item-without-referenced-sop-sequence"),
    pytest.param(_set(SCHEDULED_PROCEDURE_STEP_PRIORITY, element("CS", "URGENT")), "URGENT", id="bad-priority-urgent"),
    pytest.param(_drop(WORKLIST_LABEL), "(0074,1202)", id="worklist-label-absent"),
    pytest.param(_drop(PATIENT_NAME), "(0010,0010)", id="type2-absent"),
    pytest.param(_set(PROCEDURE_STEP_STATE, element("CS", COMPLETED)), "SCHEDULED", id="state-completed"),
    pytest.param(_drop(PROCEDURE_STEP_STATE), "(0074,1000)", id="state-absent"),
    pytest.param(_set(TRANSACTION_UID, element("UI", "1.2.3")), "(0008,1195)", id="transaction-uid-has-value"),
    pytest.param(_set(SOP_CLASS_UID, element("UI", "1.2.840.10008.5.1.4.1.1.7")), "SOPClassUID", id="sop-class"),
    pytest.param(_set(SOP_INSTANCE_UID, element("UI", "9.9.9")), "does not match", id="uid-mismatch"),
    pytest.param(_set(SCHEDULED_PROCEDURE_STEP_PRIORITY, element("CS", "medium")), "medium", id="bad-priority"),
]


@pytest.mark.parametrize(("mutate", "fragment"), STANDARD_REJECTIONS)
async def test_standard_create_rejections(mutate: Callable[[Dataset], None], fragment: str) -> None:
    sim = UpsSimulator("standard")
    dataset = valid_workitem("standard", "P", "1.2.3")
    mutate(dataset)
    async with client_for(sim) as client:
        response = await create(client, sim, "1.2.3.4", dataset)
    assert_rejected(sim, response, 400, fragment)
    assert sim.workitems == {}


async def test_standard_needs_a_uid() -> None:
    sim = UpsSimulator("standard")
    async with client_for(sim) as client:
        response = await create(client, sim, None, valid_workitem("standard", "P", "1.2.3"))
    assert_rejected(sim, response, 400, "workitem")


# --- retrieve and routing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
async def test_retrieve_unknown_and_routing(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        assert_rejected(sim, await client.get(f"{sim.base_path}/1.2.3"), 404)
        assert_rejected(sim, await client.get("/elsewhere"), 404)
        assert_rejected(sim, await client.delete(f"{sim.base_path}/1.2.3"), 405)
        assert_rejected(sim, await client.post(f"{sim.base_path}/1.2.3", content="[]", headers=JSON_HEADERS), 501)
        uid = await create_valid(client, sim)
        assert_rejected(sim, await client.get(f"{sim.base_path}/{uid}", headers={"accept": "application/xml"}), 406)


# --- cancel request -----------------------------------------------------------------------------------------------

# state before -> (status, Warning "already CANCELED" expected)
CANCEL_OUTCOMES: dict[str, dict[str, tuple[int, bool]]] = {
    "azure": {SCHEDULED: (202, False), IN_PROGRESS: (400, False), CANCELED: (409, True), COMPLETED: (400, False)},
    "dcm4chee": {SCHEDULED: (202, False), IN_PROGRESS: (409, False), CANCELED: (202, True), COMPLETED: (409, False)},
    "standard": {SCHEDULED: (202, False), IN_PROGRESS: (409, False), CANCELED: (409, True), COMPLETED: (409, False)},
}


async def request_cancel(client: httpx.AsyncClient, sim: UpsSimulator, uid: str) -> httpx.Response:
    """As a gateway would: Azure wants a dicom+json array; dcm4chee wants ?requester=; the standard needs neither."""
    url = f"{sim.base_path}/{uid}/cancelrequest"
    if sim.profile == "azure":
        return await client.post(url, content="[{}]", headers=JSON_HEADERS)
    if sim.profile == "dcm4chee":
        return await client.post(url, params={"requester": "GATEWAY"})
    return await client.post(url)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("state", [SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED])
async def test_cancel_request_by_state(profile: str, state: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        if state != SCHEDULED:
            sim.claim(uid)
        if state == CANCELED:
            sim.cancel(uid)
        if state == COMPLETED:
            sim.complete(uid)
        response = await request_cancel(client, sim, uid)
    status, already = CANCEL_OUTCOMES[profile][state]
    if status == 202:
        assert response.status_code == 202
        assert response.content == b""
    else:
        assert_rejected(sim, response, status)
    assert sim.state(uid) == (CANCELED if state == SCHEDULED else state)
    warning = response.headers.get("warning", "")
    if already:
        assert warning.startswith("299 ")
        assert ALREADY_CANCELED in warning
    else:
        assert ALREADY_CANCELED not in warning


@pytest.mark.parametrize("profile", PROFILES)
async def test_cancel_request_unknown_workitem(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        response = await request_cancel(client, sim, "1.2.3.4")
    assert_rejected(sim, response, 404)


async def test_dcm4chee_cancel_request_needs_a_requester() -> None:
    sim = UpsSimulator("dcm4chee")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        missing = await client.post(f"{sim.base_path}/{uid}/cancelrequest")
        assert_rejected(sim, missing, 400, "requester")
        assert sim.state(uid) == SCHEDULED
        with_reason = await client.post(f"{sim.base_path}/{uid}/cancelrequest", params={"requester": "GW"},
                                        content=json.dumps({"00741238": element("LT", "duplicate order")}),
                                        headers=JSON_HEADERS)
        assert with_reason.status_code == 202
        assert sim.state(uid) == CANCELED
        # dcm4chee's own path form also works.
        other = await create_valid(client, sim)
        path_form = await client.post(f"{sim.base_path}/{other}/cancelrequest/GW")
        assert path_form.status_code == 202
        assert sim.state(other) == CANCELED


async def test_azure_cancel_request_body_rules() -> None:
    sim = UpsSimulator("azure")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        url = f"{sim.base_path}/{uid}/cancelrequest"
        assert_rejected(sim, await client.post(url), 415)
        assert_rejected(sim, await client.post(url, content="{}", headers=JSON_HEADERS), 400, "JSON array")
        assert_rejected(sim, await client.post(url, content="", headers=JSON_HEADERS), 400)
        assert sim.state(uid) == SCHEDULED
        reason = [{"00741238": element("LT", "duplicate order")}]
        assert (await client.post(url, content=json.dumps(reason), headers=JSON_HEADERS)).status_code == 202
        assert sim.state(uid) == CANCELED


async def test_standard_cancel_request_with_a_body() -> None:
    sim = UpsSimulator("standard")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        url = f"{sim.base_path}/{uid}/cancelrequest"
        assert_rejected(sim, await client.post(url, content="{}", headers={"content-type": "text/plain"}), 415)
        response = await client.post(url, content=json.dumps([{"00741238": element("LT", "why")}]),
                                     headers=JSON_HEADERS)
        assert response.status_code == 202
        assert sim.state(uid) == CANCELED


# --- change state -------------------------------------------------------------------------------------------------


async def change_state(client: httpx.AsyncClient, sim: UpsSimulator, uid: str, state: str | None,
                       transaction_uid: str | None, *, requester: str | None = "GW") -> httpx.Response:
    dataset: Dataset = {}
    if transaction_uid is not None:
        dataset[TRANSACTION_UID] = element("UI", transaction_uid)
    if state is not None:
        dataset[PROCEDURE_STEP_STATE] = element("CS", state)
    params = {"requester": requester} if sim.profile == "dcm4chee" and requester else {}
    return await client.put(f"{sim.base_path}/{uid}/state", params=params, content=body_for(sim.profile, dataset),
                            headers=JSON_HEADERS)


# The status of each refusal: azure answers 400 to most, dcm4chee 409 to state conflicts, the standard in between.
CONFLICT = {"azure": 400, "dcm4chee": 409, "standard": 409}
WRONG_TRANSACTION = {"azure": 400, "dcm4chee": 409, "standard": 400}


@pytest.mark.parametrize("profile", PROFILES)
async def test_state_machine(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        transaction = new_uid()
        # Not claimed yet: cannot be canceled or completed through the state resource.
        assert_rejected(sim, await change_state(client, sim, uid, CANCELED, transaction), CONFLICT[profile])
        assert_rejected(sim, await change_state(client, sim, uid, COMPLETED, transaction), CONFLICT[profile])
        # Claim.
        claimed = await change_state(client, sim, uid, IN_PROGRESS, transaction)
        assert claimed.status_code == 200
        assert sim.state(uid) == IN_PROGRESS
        assert sim.transaction_uid(uid) == transaction
        [retrieved] = (await client.get(f"{sim.base_path}/{uid}")).json()
        assert TRANSACTION_UID not in retrieved
        [found] = (await client.get(sim.base_path, params={"PatientID": "PAT-1"})).json()
        assert TRANSACTION_UID not in found
        # Claimed twice, wrong transaction, final-state requirements.
        assert_rejected(sim, await change_state(client, sim, uid, IN_PROGRESS, new_uid()), CONFLICT[profile])
        assert_rejected(sim, await change_state(client, sim, uid, CANCELED, new_uid()), WRONG_TRANSACTION[profile],
                        "Transaction UID is incorrect")
        assert_rejected(sim, await change_state(client, sim, uid, COMPLETED, transaction), CONFLICT[profile],
                        "final state")
        assert sim.state(uid) == IN_PROGRESS
        # The owner cancels; asking again is a success with a Warning.
        assert (await change_state(client, sim, uid, CANCELED, transaction)).status_code == 200
        assert sim.state(uid) == CANCELED
        again = await change_state(client, sim, uid, CANCELED, transaction)
        assert again.status_code == 200
        assert ALREADY_CANCELED in again.headers["warning"]
        assert_rejected(sim, await change_state(client, sim, uid, COMPLETED, transaction), CONFLICT[profile])


@pytest.mark.parametrize("profile", PROFILES)
async def test_completing_needs_the_performed_procedure(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        transaction = sim.claim(uid)
        sim.workitems[uid][UPS_PERFORMED_PROCEDURE_SEQUENCE] = element("SQ", {
            PERFORMED_PROCEDURE_STEP_START_DATETIME: element("DT", "20240101120000"),
            PERFORMED_PROCEDURE_STEP_END_DATETIME: element("DT", "20240101130000"),
        })
        assert (await change_state(client, sim, uid, COMPLETED, transaction)).status_code == 200
        assert sim.state(uid) == COMPLETED


@pytest.mark.parametrize("profile", PROFILES)
async def test_change_state_request_rules(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        assert_rejected(sim, await change_state(client, sim, uid, IN_PROGRESS, None), 400, "Transaction UID")
        assert_rejected(sim, await change_state(client, sim, uid, None, new_uid()), 400, "Procedure Step State")
        assert_rejected(sim, await change_state(client, sim, uid, "DONE", new_uid()), 400, "invalid")
        assert_rejected(sim, await change_state(client, sim, uid, SCHEDULED, new_uid()),
                        400 if profile == "azure" else 409, "SCHEDULED")
        assert_rejected(sim, await change_state(client, sim, "9.9.9", IN_PROGRESS, new_uid()), 404)
        no_type = await client.put(f"{sim.base_path}/{uid}/state", params={"requester": "GW"}, content="[]")
        assert_rejected(sim, no_type, 415)
        assert sim.state(uid) == SCHEDULED


async def test_dcm4chee_change_state_needs_a_requester() -> None:
    sim = UpsSimulator("dcm4chee")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        transaction = new_uid()
        response = await change_state(client, sim, uid, IN_PROGRESS, transaction, requester=None)
        assert_rejected(sim, response, 400, "requester")
        path_form = await client.put(f"{sim.base_path}/{uid}/state/GW", headers=JSON_HEADERS, content=json.dumps({
            TRANSACTION_UID: element("UI", transaction), PROCEDURE_STEP_STATE: element("CS", IN_PROGRESS)}))
        assert path_form.status_code == 200
        assert sim.transaction_uid(uid) == transaction


async def test_azure_change_state_body_is_an_array() -> None:
    sim = UpsSimulator("azure")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        body = {TRANSACTION_UID: element("UI", new_uid()), PROCEDURE_STEP_STATE: element("CS", IN_PROGRESS)}
        response = await client.put(f"{sim.base_path}/{uid}/state", content=json.dumps(body), headers=JSON_HEADERS)
        assert_rejected(sim, response, 400, "JSON array")
        assert sim.state(uid) == SCHEDULED


async def test_helpers_set_states_directly() -> None:
    sim = UpsSimulator("standard")
    async with client_for(sim) as client:
        first = await create_valid(client, sim)
        second = await create_valid(client, sim)
    assert sim.claim(first, "1.2.3.99") == "1.2.3.99"
    assert sim.state(first) == IN_PROGRESS
    assert sim.workitems[first][TRANSACTION_UID] == element("UI", "1.2.3.99")
    with pytest.raises(ValueError, match="not SCHEDULED"):
        sim.claim(first)
    generated = sim.claim(second)
    assert generated.startswith("2.25.")
    sim.complete(first)
    sim.cancel(second)
    assert (sim.state(first), sim.state(second)) == (COMPLETED, CANCELED)


# --- search -------------------------------------------------------------------------------------------------------


async def search(client: httpx.AsyncClient, sim: UpsSimulator, params: Any) -> httpx.Response:
    return await client.get(sim.base_path, params=params, headers={"accept": DICOM_JSON})


def uids_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, (response.status_code, response.text, response.headers.get("warning"))
    assert response.headers["content-type"] == DICOM_JSON
    return [first_text(dataset, SOP_INSTANCE_UID) for dataset in response.json()]


@pytest.mark.parametrize("profile", PROFILES)
async def test_search_answers_204_when_nothing_matches(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        empty = await search(client, sim, {})
        assert empty.status_code == 204
        assert empty.content == b""
        await create_valid(client, sim, patient_id="PAT-1")
        none = await search(client, sim, {"PatientID": "PAT-2"})
        assert none.status_code == 204
        assert none.content == b""
        assert len(uids_of(await search(client, sim, {}))) == 1


@pytest.mark.parametrize("profile", PROFILES)
async def test_search_by_the_common_keys(profile: str) -> None:
    sim = UpsSimulator(profile)
    study_a, study_b = "1.2.840.1.1", "1.2.840.1.2"
    async with client_for(sim) as client:
        a = await create_valid(client, sim, patient_id="PAT-A", study_uid=study_a, accession_number="ACC-A",
                               scheduled="20240105093000")
        b = await create_valid(client, sim, patient_id="PAT-B", study_uid=study_b, accession_number="ACC-B",
                               scheduled="20240110093000")
        assert uids_of(await search(client, sim, {"PatientID": "PAT-A"})) == [a]
        assert uids_of(await search(client, sim, {"00100020": "PAT-B"})) == [b]
        assert uids_of(await search(client, sim, {"ReferencedRequestSequence.AccessionNumber": "ACC-B"})) == [b]
        assert uids_of(await search(client, sim, {"0040A370.00080050": "ACC-A"})) == [a]
        assert uids_of(await search(client, sim, {"StudyInstanceUID": study_b})) == [b]
        assert uids_of(await search(client, sim, {"ScheduledProcedureStepStartDateTime": "20240101-20240106"})) == [a]
        assert uids_of(await search(client, sim, {"ScheduledProcedureStepStartDateTime": "20240106-"})) == [b]
        assert uids_of(await search(client, sim, {"ScheduledProcedureStepStartDateTime": "20240110"})) == [b]
        sim.cancel(a)
        assert uids_of(await search(client, sim, {"ProcedureStepState": SCHEDULED})) == [b]
        assert uids_of(await search(client, sim, {"ProcedureStepState": CANCELED, "PatientID": "PAT-A"})) == [a]
        assert uids_of(await search(client, sim, {"limit": "1", "offset": "1"})) == [b]
        bad_range = await search(client, sim, {"ScheduledProcedureStepStartDateTime": "-"})
        assert_rejected(sim, bad_range, 400)
        assert_rejected(sim, await search(client, sim, {"limit": "0"}), 400)
        assert_rejected(sim, await search(client, sim, {"offset": "-1"}), 400)
        assert_rejected(sim, await search(client, sim, {"NoSuchKeyword": "x"}), 400)
        assert (await search(client, sim, {"offset": "5"})).status_code == 204


async def test_azure_search_accepts_only_its_keys() -> None:
    sim = UpsSimulator("azure")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim, patient_name="Doe^Jane")
        for key in ("AccessionNumber", "WorklistLabel", "0040A370.0020000D", "PatientBirthDate", "foo"):
            assert_rejected(sim, await search(client, sim, {key: "x"}), 400, key)
        assert_rejected(sim, await search(client, sim, {"PatientID": ""}), 400, "empty")
        assert_rejected(sim, await search(client, sim, [("PatientID", "a"), ("00100020", "b")]), 400, "more than once")
        assert_rejected(sim, await search(client, sim, {"limit": "201"}), 400, "200")
        assert_rejected(sim, await search(client, sim, {"fuzzymatching": "yes"}), 400)
        assert_rejected(sim, await search(client, sim, {"includefield": "NoSuchKeyword"}), 400)
        for key in ("ScheduledStationNameCodeSequence.CodeValue", "00404026.00080100",
                    "ScheduledStationGeographicLocationCodeSequence.CodeValue",
                    "ReferencedRequestSequence.RequestedProcedureID"):
            assert (await search(client, sim, {key: "none"})).status_code == 204
        assert uids_of(await search(client, sim, {"limit": "200", "includefield": "all"})) == [uid]
        assert uids_of(await search(client, sim, {"PatientName": "doe^jane"})) == [uid]
        assert (await search(client, sim, {"PatientName": "Doe"})).status_code == 204
        assert uids_of(await search(client, sim, {"PatientName": "ja do", "fuzzymatching": "true"})) == [uid]


async def test_azure_study_search_looks_at_the_top_level_only() -> None:
    sim = UpsSimulator("azure")
    dataset = valid_workitem("azure", "P", "1.2.840.9")
    del dataset[STUDY_INSTANCE_UID]  # the study only in the ReferencedRequestSequence item
    async with client_for(sim) as client:
        assert (await create(client, sim, "1.2.3.4", dataset)).status_code == 201
        assert (await search(client, sim, {"StudyInstanceUID": "1.2.840.9"})).status_code == 204
    other = UpsSimulator("dcm4chee")
    dataset = valid_workitem("dcm4chee", "P", "1.2.840.9")
    del dataset[STUDY_INSTANCE_UID]
    async with client_for(other) as client:
        assert (await create(client, other, "1.2.3.4", dataset)).status_code == 201
        assert uids_of(await search(client, other, {"StudyInstanceUID": "1.2.840.9"})) == ["1.2.3.4"]


async def test_azure_search_limit_defaults_to_100() -> None:
    sim = UpsSimulator("azure")
    async with client_for(sim) as client:
        uid = await create_valid(client, sim)
        template = sim.workitems[uid]
        for index in range(150):
            copied = copy.deepcopy(template)
            copied[SOP_INSTANCE_UID] = element("UI", f"1.2.3.{index}")
            sim.workitems[f"1.2.3.{index}"] = copied
        assert len(uids_of(await search(client, sim, {}))) == 100
        assert len(uids_of(await search(client, sim, {"offset": "100"}))) == 51


@pytest.mark.parametrize("profile", ["dcm4chee", "standard"])
async def test_search_warns_when_truncated_and_matches_wildcards(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        first = await create_valid(client, sim, patient_name="Doe^Jane")
        second = await create_valid(client, sim, patient_name="Doe^John")
        await create_valid(client, sim, patient_name="Roe^Richard")
        page = await search(client, sim, {"PatientName": "doe*", "limit": "1"})
        assert uids_of(page) == [first]
        assert page.headers["warning"] == (f"299 http://testserver{sim.base_path}: "
                                           "There are 1 additional results that can be requested")
        last = await search(client, sim, {"PatientName": "Doe^J?hn", "limit": "1"})
        assert uids_of(last) == [second]
        assert "warning" not in last.headers
        # An empty value is universal matching; a list of UIDs matches any of them.
        assert len(uids_of(await search(client, sim, {"PatientName": ""}))) == 3
        assert uids_of(await search(client, sim, {"SOPInstanceUID": f"{first},{second}"})) == [first, second]


@pytest.mark.parametrize("profile", PROFILES)
async def test_every_request_is_recorded(profile: str) -> None:
    sim = UpsSimulator(profile)
    async with client_for(sim) as client:
        await client.get(sim.base_path, params={"PatientID": "X", "limit": "5"})
        await client.post(f"{sim.base_path}/1.2.3/cancelrequest", params={"requester": "GW"})
    assert sim.requests == [
        ("GET", sim.base_path, "PatientID=X&limit=5"),
        ("POST", f"{sim.base_path}/1.2.3/cancelrequest", "requester=GW"),
    ]


@pytest.mark.parametrize("profile", PROFILES)
async def test_the_archive_behind_the_same_root_answers_study_searches(profile: str) -> None:
    sim = UpsSimulator(profile)
    sim.studies.update({"1.2.840.7.1": "PAT-A", "1.2.840.7.2": "PAT-B"})
    async with client_for(sim) as client:
        assert sim.studies_path == sim.base_path.removesuffix("/workitems") + "/studies"
        found = await client.get(sim.studies_path, params={"0020000D": "1.2.840.7.2,1.2.840.7.9",
                                                           "includefield": "00100020", "limit": "20"})
        assert found.status_code == 200
        assert found.headers["content-type"] == DICOM_JSON
        assert found.json() == [{STUDY_INSTANCE_UID: {"vr": "UI", "Value": ["1.2.840.7.2"]},
                                 PATIENT_ID: {"vr": "LO", "Value": ["PAT-B"]}}]
        both = await client.get(sim.studies_path, params={"StudyInstanceUID": "1.2.840.7.1,1.2.840.7.2"})
        assert len(both.json()) == 2
        assert (await client.get(sim.studies_path, params={"StudyInstanceUID": "1.2.840.7.1",
                                                           "PatientID": "PAT-B"})).status_code == 204
        assert (await client.get(sim.studies_path, params={"StudyInstanceUID": "1.2.840.7.9"})).status_code == 204
        assert (await client.get(sim.studies_path, params={"Modality": "CT"})).status_code == 400
        assert (await client.post(sim.studies_path)).status_code == 404  # only the search is simulated
