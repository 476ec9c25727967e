"""The UPS create dataset the gateway builds is accepted by each dialect of the strict simulator, reads back to the
fields it was built from, and carries no value the caller did not give."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.worklist.fields import FIELDS, parse_workitem
from gateway.worklist.ups import build_create, read_workitem
from tests.support.ups_simulator import PROFILES, UpsSimulator, new_uid
from tests.worklist.test_workitems import EVERY_FIELD as ROUTE_EVERY_FIELD
from tests.worklist.test_workitems import SEED

# The same workitems as the route tests (tests/test_workitems.py), with a fixed StudyInstanceUID here.
EVERY_FIELD = {**ROUTE_EVERY_FIELD, "StudyInstanceUID": "1.2.3.4.5"}


async def create(profile: str, body: dict[str, object], uid: str) -> httpx.Response:
    simulator = UpsSimulator(profile)
    payload: object = body if profile == "dcm4chee" else [body]
    query = uid if profile == "azure" else f"workitem={uid}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=simulator.app), base_url="http://ups") as client:
        created = await client.post(f"{simulator.base_path}?{query}", content=json.dumps(payload),
                                    headers={"Content-Type": "application/dicom+json"})
        if created.status_code != 201:
            return created
        return await client.get(f"{simulator.base_path}/{uid}")


def simple(read: dict[str, list[Any]]) -> dict[str, Any]:
    """Read-back values as a client would have posted them."""
    out: dict[str, Any] = {}
    for name, found in read.items():
        if found:
            value = found[0]
            out[name] = value["Alphabetic"] if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("profile", PROFILES)
async def test_the_seed_is_accepted_by_every_dialect_without_a_birth_date(profile: str) -> None:
    values = parse_workitem(SEED)
    study, uid = new_uid(), new_uid()
    answer = await create(profile, build_create(values, dialect=profile, study_uid=study), uid)
    assert answer.status_code == 200, answer.text
    [stored] = answer.json()
    assert stored["00404005"]["Value"] == ["20000101120000"]
    assert stored["0040A370"]["Value"][0]["0020000D"]["Value"] == [study]
    assert simple(read_workitem(stored)) == {**SEED, "StudyInstanceUID": study}


@pytest.mark.parametrize("profile", PROFILES)
async def test_every_field_reads_back_as_it_was_posted(profile: str) -> None:
    values = parse_workitem(EVERY_FIELD)
    uid = new_uid()
    answer = await create(profile, build_create(values, dialect=profile, study_uid="1.2.3.4.5"), uid)
    assert answer.status_code == 200, answer.text
    [stored] = answer.json()
    assert simple(read_workitem(stored)) == EVERY_FIELD
    assert {field.name for field in FIELDS} == set(EVERY_FIELD)


def test_azure_gets_unknown_type_2_attributes_empty_and_nothing_made_up() -> None:
    dataset = build_create(parse_workitem(SEED), dialect="azure", study_uid="1.2.3")
    for tag, vr in (("00100030", "DA"), ("00100040", "CS"), ("00380010", "LO"), ("00081080", "LO")):
        assert dataset[tag] == {"vr": vr}  # PatientBirthDate, PatientSex, AdmissionID, AdmittingDiagnosesDescription
    assert "0040E020" not in dataset  # no Type of Instances and no invented Referenced SOP Sequence
    assert "00081199" not in dataset
    assert dataset["00404018"] == {"vr": "SQ"}  # no step ID given: no Scheduled Workitem Code made up


def test_without_a_station_name_or_step_id_neither_reads_back() -> None:
    read = read_workitem(build_create(parse_workitem(SEED), dialect="standard", study_uid="1.2.3"))
    assert read["ScheduledStationAETitle"] == ["NGV"]
    assert read["ScheduledStationName"] == []  # the Code Meaning holds the AE title only because it must
    assert read["ScheduledProcedureStepID"] == []
