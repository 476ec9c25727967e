"""The page's "Worklist management" section: each example sent with curl as printed, against the UPS-RS simulator
in each real server's profile. Answers are in the layout of the page's retrieval example (Modality Worklist)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.contract.conftest import Deployment
from tests.contract.page import WORKITEM_CREATION, WORKITEMS_DELETION, WORKITEMS_RETRIEVAL
from tests.contract.shapes import extra, missing, shape

# Tags a workitem carries beyond the page's example (the gateway's documented additions): the workitem's own UID,
# its state, and the simple fields the example happens not to fill.
EXTRA_TAGS = {"00080018", "00741000", "00380060"}
CREATED = json.loads(WORKITEM_CREATION.request.split("--data '", 1)[1].rsplit("'", 1)[0])


def workitem(deployment: Deployment, **fields: str) -> httpx.Response:
    """A workitem created through the gateway (setup for the examples that read or delete one)."""
    body = {key: value for key, value in CREATED.items() if key != "StudyInstanceUID"} | fields
    return httpx.post(f"{deployment.url}/workitems", json=body, headers=deployment.headers("clinician"))


def value(dataset: dict[str, Any], *path: str) -> Any:
    for tag in path[:-1]:
        dataset = dataset[tag]["Value"][0]
    values = dataset[path[-1]].get("Value")
    return values[0] if values else None


def assert_worklist_layout(dataset: dict[str, Any]) -> None:
    [expected] = WORKITEMS_RETRIEVAL.response_json()
    assert missing(shape(expected), shape(dataset)) == []
    assert set(extra(shape(expected), shape(dataset))) <= EXTRA_TAGS


def test_workitem_creation(worklist_gateway: Deployment) -> None:
    answer = worklist_gateway.send(WORKITEM_CREATION.request, None, "clinician")
    assert answer.status == 200, answer.body
    dataset = answer.json()
    assert_worklist_layout(dataset)
    assert value(dataset, "0020000D") == CREATED["StudyInstanceUID"]
    assert value(dataset, "00100020") == CREATED["PatientID"]
    assert value(dataset, "00100010") == {"Alphabetic": CREATED["PatientName"]}
    assert value(dataset, "00080050") == CREATED["AccessionNumber"]
    step = ("00400100",)
    assert value(dataset, *step, "00080060") == CREATED["Modality"]
    assert value(dataset, *step, "00400001") == CREATED["ScheduledStationAETitle"]
    assert value(dataset, *step, "00400002") == CREATED["ScheduledProcedureStepStartDate"]
    assert value(dataset, *step, "00400003") == CREATED["ScheduledProcedureStepStartTime"]
    assert value(dataset, *step, "00400007") == CREATED["ScheduledProcedureStepDescription"]
    # The page's status table: the same study again is 409.
    again = worklist_gateway.send(WORKITEM_CREATION.request, None, "clinician")
    assert again.status == 409, again.body


def test_workitem_creation_with_an_empty_body_is_400(worklist_gateway: Deployment) -> None:
    command = WORKITEM_CREATION.request.split("--data", 1)[0] + "--data '{}'"
    answer = worklist_gateway.send(command, None, "clinician")
    assert answer.status == 400, answer.body
    assert set(answer.json()["error"]) == {"code", "message", "details"}


def test_workitems_retrieval(worklist_gateway: Deployment) -> None:
    created = workitem(worklist_gateway, PatientID="123456789")
    assert created.status_code == 200, created.text
    answer = worklist_gateway.send(WORKITEMS_RETRIEVAL.request, None, "clinician")
    assert answer.status == 200, answer.body
    found = answer.json()
    assert [value(item, "00100020") for item in found] == ["123456789"]
    for item in found:
        assert_worklist_layout(item)
    assert found[0] == created.json()


def test_workitems_deletion(worklist_gateway: Deployment) -> None:
    study = "1.123.45.6789.123456789"
    created = workitem(worklist_gateway, PatientID="DEL-1", StudyInstanceUID=study)
    assert created.status_code == 200, created.text
    answer = worklist_gateway.send(WORKITEMS_DELETION.request, None, "clinician")
    assert answer.status == 204, answer.body
    assert answer.body == b""
    # Removed: no longer listed, and the study may have a new workitem.
    listed = httpx.get(f"{worklist_gateway.url}/workitems", params={"patientID": "DEL-1"},
                       headers=worklist_gateway.headers("clinician"))
    assert listed.status_code == 200, listed.text
    assert listed.json() == []
    cancelled = httpx.get(f"{worklist_gateway.url}/workitems",
                          params={"patientID": "DEL-1", "ProcedureStepState": "CANCELED"},
                          headers=worklist_gateway.headers("clinician"))
    assert [value(item, "0020000D") for item in cancelled.json()] == [study], cancelled.text
    assert workitem(worklist_gateway, PatientID="DEL-1", StudyInstanceUID=study).status_code == 200
