"""The page's "Viewer Token" and "Unique Identifier (UID) generation" sections, sent with curl as printed."""

from __future__ import annotations

import httpx

from gateway.dicom.uid import is_valid_uid
from tests.contract.conftest import UID_ROOT, Deployment, StoredExam
from tests.contract.page import UID_GENERATION, VIEWER_TOKEN


def test_token_viewer_retrieval(exams_gateway: Deployment, stored_exam: StoredExam) -> None:
    answer = exams_gateway.send(VIEWER_TOKEN.request, stored_exam.placeholders, "clinician")
    assert answer.status == 200, answer.body
    body = answer.json()
    # The page's field, and the gateway's documented addition: the token's lifetime in seconds.
    assert set(body) == {*VIEWER_TOKEN.response_json(), "expiresIn"}
    assert isinstance(body["token"], str)
    assert body["token"]
    # The token opens that study through /dicomweb, and nothing else.
    study = stored_exam.instance.study_uid
    opened = httpx.get(f"{exams_gateway.url}/dicomweb/studies/{study}/series",
                       headers={"Authorization": f"Bearer {body['token']}"})
    assert opened.status_code == 200, opened.text
    other = httpx.get(f"{exams_gateway.url}/dicomweb/studies/{study}9/series",
                      headers={"Authorization": f"Bearer {body['token']}"})
    assert other.status_code == 404, other.text


def test_uid_generation(exams_gateway: Deployment) -> None:
    answer = exams_gateway.send(UID_GENERATION.request, None, "clinician")
    assert answer.status == 200, answer.body
    body = answer.json()
    assert set(body) == set(UID_GENERATION.response_json())
    assert is_valid_uid(body["uid"])
    assert body["uid"].startswith(UID_ROOT + ".")
