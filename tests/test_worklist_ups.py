"""The UPS create dataset the gateway builds is accepted by each dialect of the strict simulator (issue 4, WIP)."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.worklist_fields import parse_workitem
from gateway.worklist_ups import MissingForDialect, build_create
from tests.ups_simulator import UpsSimulator, new_uid

SEED = {
    "PatientID": "SDJ38WMD1MS01", "PatientName": "MARIO^ROSSI", "ScheduledStationAETitle": "NGV",
    "ScheduledProcedureStepStartDate": "20000101", "ScheduledProcedureStepStartTime": "120000",
    "ScheduledProcedureStepDescription": "Tac", "Modality": "CT", "AccessionNumber": "NDS83JF784N209D2",
}


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


@pytest.mark.parametrize("profile", ["standard", "dcm4chee", "azure"])
async def test_the_seed_workitem_is_accepted_with_its_values_in_their_ups_places(profile: str) -> None:
    values = parse_workitem({**SEED, "PatientBirthDate": "19800101"})
    study, uid = new_uid(), new_uid()
    answer = await create(profile, build_create(values, dialect=profile, study_uid=study), uid)
    assert answer.status_code == 200, answer.text
    [stored] = answer.json()
    assert stored["00100020"]["Value"] == ["SDJ38WMD1MS01"]
    assert stored["00100010"]["Value"] == [{"Alphabetic": "MARIO^ROSSI"}]
    assert stored["00404005"]["Value"] == ["20000101120000"]
    assert stored["00741204"]["Value"] == ["Tac"]
    assert stored["00741000"]["Value"] == ["SCHEDULED"]
    assert stored["0020000D"]["Value"] == [study]
    [request] = stored["0040A370"]["Value"]
    assert request["00080050"]["Value"] == ["NDS83JF784N209D2"]
    assert request["0020000D"]["Value"] == [study]
    assert stored["00404025"]["Value"][0]["00080100"]["Value"] == ["NGV"]
    assert stored["00404026"]["Value"][0]["00080100"]["Value"] == ["CT"]
    assert "Value" not in stored.get("00081195", {})


def test_azure_needs_a_birth_date() -> None:
    with pytest.raises(MissingForDialect) as missing:
        build_create(parse_workitem(SEED), dialect="azure", study_uid=new_uid())
    assert missing.value.fields == ["PatientBirthDate"]
