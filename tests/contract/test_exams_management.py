"""The page's "Exams management" section: each example sent with curl as printed, against Orthanc."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from tests.contract.conftest import PAGE_PATIENT, Deployment, StoredExam
from tests.contract.page import EXAM_THUMBNAIL, EXAMS_RETRIEVAL, EXAMS_UPLOAD
from tests.contract.shapes import missing, shape
from tests.support.dicom_factory import generated, write
from tests.support.exams_support import new_patient_id


def error_code(answer_json: object) -> str:
    assert isinstance(answer_json, dict)
    assert set(answer_json["error"]) == {"code", "message", "details"}
    return str(answer_json["error"]["code"])


# --- Exams upload ----------------------------------------------------------------------------------------------------


def test_exams_upload(exams_gateway: Deployment, tmp_path: Path) -> None:
    instance = generated(PAGE_PATIENT)
    path = write(instance, tmp_path, "file.dcm")
    answer = exams_gateway.send(EXAMS_UPLOAD.request, {"/path/to/dicom/file.dcm": str(path)}, "clinician")
    assert answer.status == 200, answer.body
    [dataset] = answer.json()
    [expected] = EXAMS_UPLOAD.response_json()
    assert missing(shape(expected), shape(dataset)) == []
    [item] = dataset["00081199"]["Value"]
    assert item["00081155"]["Value"] == [instance.sop_uid]
    assert item["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]


def test_exams_upload_of_a_file_that_is_not_dicom_is_422(exams_gateway: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "file.dcm"
    path.write_bytes(b"this is not a DICOM file\n" * 20)
    answer = exams_gateway.send(EXAMS_UPLOAD.request, {"/path/to/dicom/file.dcm": str(path)}, "clinician")
    assert answer.status == 422, answer.body
    assert error_code(answer.json()) == "unprocessable_content"


# --- Exams retrieval: studies, series, instances --------------------------------------------------------------------


def test_exams_retrieval(exams_gateway: Deployment, stored_exam: StoredExam) -> None:
    """`GET /exams/studies?patientID=123456789`, the page's spelling of the parameter."""
    answer = exams_gateway.send(EXAMS_RETRIEVAL.request, None, "clinician")
    assert answer.status == 200, answer.body
    studies = answer.json()
    [expected] = EXAMS_RETRIEVAL.response_json()
    assert studies
    assert all(missing(shape(expected), shape(study)) == [] for study in studies)
    assert stored_exam.instance.study_uid in {study["0020000D"]["Value"][0] for study in studies}
    assert {study["00100020"]["Value"][0] for study in studies} == {PAGE_PATIENT}


def test_series_retrieval(exams_gateway: Deployment, stored_exam: StoredExam) -> None:
    """The page lists `PatientId` for this endpoint (it gives no example)."""
    command = "curl --request GET --url https://your-dicom-service/exams/studies/STUDY_UID/series?PatientId=123456789"
    answer = exams_gateway.send(command, stored_exam.placeholders, "clinician")
    assert answer.status == 200, answer.body
    assert [series["0020000E"]["Value"][0] for series in answer.json()] == [stored_exam.instance.series_uid]


def test_instances_retrieval(exams_gateway: Deployment, stored_exam: StoredExam) -> None:
    command = ("curl --request GET --url "
               "https://your-dicom-service/exams/studies/STUDY_UID/series/SERIES_UID/instances?PatientId=123456789")
    answer = exams_gateway.send(command, stored_exam.placeholders, "clinician")
    assert answer.status == 200, answer.body
    assert [instance["00080018"]["Value"][0] for instance in answer.json()] == [stored_exam.instance.sop_uid]


def test_exams_retrieval_without_the_mandatory_patient_id_is_400(exams_gateway: Deployment) -> None:
    answer = exams_gateway.send("curl --request GET --url https://your-dicom-service/exams/studies", None,
                                "clinician")
    assert answer.status == 400
    assert error_code(answer.json()) == "bad_request"


# --- Exam retrieval: the JPEG thumbnail and the DICOM file -------------------------------------------------------


def test_exam_jpeg_thumbnail_retrieval(exams_gateway: Deployment, stored_exam: StoredExam) -> None:
    """The page's example names no PatientId (it lists only `fileType` for this endpoint)."""
    answer = exams_gateway.send(EXAM_THUMBNAIL.request, stored_exam.placeholders, "clinician")
    assert answer.status == 200, answer.body
    assert answer.media_type == "image/jpeg"
    assert answer.body[:2] == b"\xff\xd8"


def test_exam_file_retrieval(exams_gateway: Deployment, stored_exam: StoredExam) -> None:
    """The same example with the page's other `fileType`, `application/dicom`."""
    command = EXAM_THUMBNAIL.request.replace("fileType=image%2Fjpeg", "fileType=application%2Fdicom")
    answer = exams_gateway.send(command, stored_exam.placeholders, "clinician")
    assert answer.status == 200, answer.body
    assert answer.media_type == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(answer.body)).SOPInstanceUID == stored_exam.instance.sop_uid


def test_exam_retrieval_as_the_patient_without_patient_id(exams_gateway: Deployment,
                                                          stored_exam: StoredExam) -> None:
    """A patient's token without PatientId reaches its own instance, and another patient's token gets 404."""
    if exams_gateway.auth_mode == "none":
        pytest.skip("AUTH_MODE=none: every caller is a clinician, there is no patient token to scope")
    own = exams_gateway.send(EXAM_THUMBNAIL.request, stored_exam.placeholders, "patient", patient_id=PAGE_PATIENT)
    assert own.status == 200, own.body
    other = exams_gateway.send(EXAM_THUMBNAIL.request, stored_exam.placeholders, "patient",
                               patient_id=new_patient_id())
    assert other.status == 404, other.body
    command = EXAM_THUMBNAIL.request.replace("fileType=image%2Fjpeg", "fileType=application%2Fdicom")
    assert exams_gateway.send(command, stored_exam.placeholders, "patient", patient_id=new_patient_id()).status == 404


def test_exam_retrieval_without_the_mandatory_file_type_is_400(exams_gateway: Deployment,
                                                               stored_exam: StoredExam) -> None:
    command = EXAM_THUMBNAIL.request.replace("?fileType=image%2Fjpeg", "")
    answer = exams_gateway.send(command, stored_exam.placeholders, "clinician")
    assert answer.status == 400
    assert error_code(answer.json()) == "bad_request"
