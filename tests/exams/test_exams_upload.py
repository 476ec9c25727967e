"""POST /exams against the real Orthanc: contract, refusals, duplicates, preamble, scope (issue 3)."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator

import httpx
import pydicom
import pytest

from gateway.upstream.orthanc import orthanc_id
from tests.support.dicom_factory import bundled, generated, new_uid
from tests.support.exams_support import (
    PUBLIC_BASE_URL,
    Exams,
    clinician,
    error,
    gateway,
    new_patient_id,
    patient,
    values,
)
from tests.support.orthanc import Orthanc
from tests.support.recorder import RecordingProxy


@pytest.fixture
async def exams(orthanc_url: str) -> AsyncIterator[Exams]:
    async with gateway(orthanc_url) as client:
        yield Exams(client)


async def stored_sop_uids(orthanc: Orthanc, patient_id: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{orthanc.dicomweb_url}/instances?PatientID={patient_id}")
    return values(response.json(), "00080018")


async def test_upload_answers_the_stow_dataset_with_gateway_retrieve_urls(exams: Exams, orthanc: Orthanc) -> None:
    pid = new_patient_id()
    study = new_uid()
    first, second = generated(pid, study_uid=study), bundled("ct", pid, study_uid=study)
    response = await exams.upload(first, second)
    assert response.status_code == 200, response.text
    [dataset] = response.json()
    referenced = dataset["00081199"]["Value"]
    assert {item["00081155"]["Value"][0] for item in referenced} == {first.sop_uid, second.sop_uid}
    for item in referenced:
        assert item["00081150"]["Value"][0]  # SOP class
        url = item["00081190"]["Value"][0]
        assert url.startswith(f"{PUBLIC_BASE_URL}/exams/studies/{study}/series/")
        # The RetrieveURL works as it is, through the gateway.
        got = await exams.client.get(url.removeprefix(PUBLIC_BASE_URL), headers=clinician())
        assert got.status_code == 200
        sent = first if item["00081155"]["Value"][0] == first.sop_uid else second
        assert got.content[128:] == sent.without_preamble
    assert dataset["00081190"]["Value"][0] == f"{PUBLIC_BASE_URL}/exams/studies/{study}/series?PatientId={pid}"
    assert "Value" not in dataset.get("00081198", {})  # nothing failed
    # No string anywhere in the answer names the internal PACS.
    assert orthanc.url not in response.text
    assert "127.0.0.1" not in response.text
    assert sorted(await stored_sop_uids(orthanc, pid)) == sorted([first.sop_uid, second.sop_uid])


async def test_upload_across_studies_has_no_single_study_url(exams: Exams) -> None:
    pid = new_patient_id()
    response = await exams.upload(generated(pid), generated(pid))
    assert response.status_code == 200
    [dataset] = response.json()
    assert "00081190" not in dataset
    assert len(dataset["00081199"]["Value"]) == 2


async def test_not_dicom_is_422_naming_the_file_and_nothing_is_stored(exams: Exams, orthanc: Orthanc) -> None:
    pid = new_patient_id()
    good = generated(pid)
    files = [("file", ("good.dcm", good.data, "application/dicom")),
             ("file", ("notes.txt", b"just some text, not DICOM", "text/plain"))]
    body = error(await exams.client.post("/exams", files=files, headers=clinician()), 422,
                 "unprocessable_content")
    assert body["details"]["file"] == "notes.txt"
    assert await stored_sop_uids(orthanc, pid) == []


@pytest.mark.parametrize("attribute", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                                       "PatientID"])
async def test_missing_identifying_attribute_is_422_naming_it(exams: Exams, attribute: str) -> None:
    instance = generated(new_patient_id(), omit=(attribute,))
    body = error(await exams.upload(instance), 422, "unprocessable_content")
    assert body["details"]["attribute"] == attribute
    assert body["details"]["file"] == f"{instance.sop_uid}.dcm"


@pytest.mark.parametrize("bad_uid", ["1.2.03.4", "1.2.3.", "abc", "1." + "2" * 70])
async def test_invalid_uid_is_422(exams: Exams, bad_uid: str) -> None:
    body = error(await exams.upload(generated(new_patient_id(), study_uid=bad_uid)), 422)
    assert body["details"]["attribute"] == "StudyInstanceUID"


async def test_damaged_headers_are_422_never_500(exams: Exams) -> None:
    good = generated(new_patient_id()).data
    damaged = [
        bytes(128) + b"DICM",  # prefix only
        bytes(128) + b"DICM" + os.urandom(300),
        good[:200],  # cut inside the file meta
        good[:132] + bytes([0xFF]) * 64 + good[196:],  # file meta scrambled
        good[:400] + os.urandom(200),  # cut in the dataset, garbage after
        b"",
    ]
    for index, data in enumerate(damaged):
        files = [("file", (f"damaged{index}.dcm", data, "application/dicom"))]
        response = await exams.client.post("/exams", files=files, headers=clinician())
        assert response.status_code == 422, (index, response.text)


async def test_duplicate_instance_is_409_with_reason_45070(exams: Exams) -> None:
    instance = generated(new_patient_id())
    assert (await exams.upload(instance)).status_code == 200
    body = error(await exams.upload(instance), 409, "conflict")
    assert body["details"]["failures"] == [
        {"file": f"{instance.sop_uid}.dcm", "SOPInstanceUID": instance.sop_uid, "FailureReason": 45070}
    ]
    [failed] = body["details"]["response"][0]["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [45070]
    assert failed["00081155"]["Value"] == [instance.sop_uid]


async def test_partly_duplicate_upload_stores_the_rest_and_lists_the_duplicate(exams: Exams, orthanc: Orthanc) -> None:
    pid = new_patient_id()
    old, new = generated(pid), generated(pid)
    assert (await exams.upload(old)).status_code == 200
    response = await exams.upload(old, new)
    assert response.status_code == 200
    [dataset] = response.json()
    assert values(dataset["00081199"]["Value"], "00081155") == [new.sop_uid]
    [failed] = dataset["00081198"]["Value"]
    assert (failed["00081155"]["Value"], failed["00081197"]["Value"]) == ([old.sop_uid], [45070])
    assert sorted(await stored_sop_uids(orthanc, pid)) == sorted([old.sop_uid, new.sop_uid])


async def test_same_instance_twice_in_one_upload_is_stored_once(exams: Exams) -> None:
    instance = generated(new_patient_id())
    response = await exams.upload(instance, instance)
    assert response.status_code == 200
    [dataset] = response.json()
    assert values(dataset["00081199"]["Value"], "00081155") == [instance.sop_uid]
    assert values(dataset["00081198"]["Value"], "00081197") == [45070]


async def test_upload_above_the_limit_is_413_with_or_without_content_length(orthanc_url: str) -> None:
    instance = generated(new_patient_id(), rows=128, columns=128)  # about 33 KB
    async with gateway(orthanc_url, exams_max_upload_bytes=10_000) as client:
        exams = Exams(client)
        error(await exams.upload(instance), 413, "payload_too_large")
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.dcm\"\r\n"
                f"Content-Type: application/dicom\r\n\r\n").encode()
        body = head + instance.data + f"\r\n--{boundary}--\r\n".encode()

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 4096):
                yield body[start:start + 4096]

        response = await client.post("/exams", content=chunked(), headers={
            **patient(instance.patient_id), "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert "content-length" not in response.request.headers
        error(response, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["application/json", 'multipart/related; type="application/dicom"',
                                          "application/dicom", ""])
async def test_other_content_types_are_415(exams: Exams, content_type: str) -> None:
    headers = {**clinician(), "Content-Type": content_type}
    error(await exams.client.post("/exams", content=b"{}", headers=headers), 415, "unsupported_media_type")


async def test_form_without_file_parts_is_400(exams: Exams) -> None:
    response = await exams.client.post("/exams", files=[("document", ("a.dcm", b"x", "application/dicom"))],
                                       headers=clinician())
    assert error(response, 400)["details"] == {"field": "document"}
    response = await exams.client.post("/exams", data={"file": "not a file"}, files=[],
                                       headers={**clinician(),
                                                "Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 400


async def test_preamble_is_replaced_with_zeros_and_the_rest_is_byte_identical(exams: Exams, orthanc: Orthanc) -> None:
    # A preamble that makes the file a Windows executable as well (the PS3.10 preamble attack).
    instance = generated(new_patient_id(), preamble=b"MZ\x90\x00" + os.urandom(124))
    assert (await exams.upload(instance)).status_code == 200
    async with httpx.AsyncClient() as client:  # straight from Orthanc: what is stored
        lookup = await client.post(f"{orthanc.url}/tools/lookup", content=instance.sop_uid)
        orthanc_id = lookup.json()[0]["ID"]
        stored = (await client.get(f"{orthanc.url}/instances/{orthanc_id}/file")).content
    assert stored[:128] == bytes(128)
    assert stored[128:] == instance.without_preamble


async def test_patient_uploads_own_files_but_not_another_patients(orthanc_url: str, orthanc: Orthanc) -> None:
    me, other = new_patient_id(), new_patient_id()
    async with gateway(orthanc_url) as client:
        exams = Exams(client)
        mine = generated(me)
        assert (await exams.upload(mine, headers=patient(me))).status_code == 200
        body = error(await exams.upload(generated(me), generated(other), headers=patient(me)), 403, "forbidden")
        assert other not in str(body)
    assert await stored_sop_uids(orthanc, other) == []
    assert await stored_sop_uids(orthanc, me) == [mine.sop_uid]  # nothing of the refused upload was stored


@pytest.mark.parametrize("role", ["clinician", "patient"])
async def test_stow_reaches_the_upstream_as_one_multipart_related_request(
    recorder: tuple[RecordingProxy, str], role: str
) -> None:
    proxy, url = recorder
    pid, study, series = new_patient_id(), new_uid(), new_uid()
    instances = [generated(pid, study_uid=study, series_uid=series) for _ in range(3)]
    async with gateway(url) as client:
        response = await Exams(client).upload(*instances, headers=clinician() if role == "clinician" else patient(pid))
    assert response.status_code == 200
    paths = [seen.path for seen in proxy.seen]
    stow = paths.index("/dicom-web/studies")
    before, after = proxy.seen[:stow], proxy.seen[stow + 1 :]
    # Before the store: the exact instances are looked up by Orthanc id, one key lookup for their series; the study
    # and series UIDs once each (are they another patient's?); a patient's SOP Instance UIDs anywhere (one query).
    # A clinician's upload does not wait for the UID lookups (they may land after the store has begun).
    series_id = f"/series/{orthanc_id(pid, study, series)}"
    looked_up = [seen for seen in (before if role == "patient" else proxy.seen) if seen.path == "/tools/lookup"]
    assert sorted(seen.body for seen in looked_up) == sorted([study.encode(), series.encode()])
    checks = sorted([series_id] + (["/dicom-web/instances"] if role == "patient" else []))
    assert sorted(seen.path for seen in before if seen.path != "/tools/lookup") == checks
    searches = [seen for seen in before if seen.path == "/dicom-web/instances"]
    assert all(seen.query.count(",") == 2 for seen in searches)
    # The files go up in one STOW-RS request.
    assert [seen.method for seen in proxy.seen if seen.path == "/dicom-web/studies"] == ["POST"]
    # After a patient's upload: its series read back (gateway.exams.readback: filed under the checked PatientID) and its
    # study, series and SOP Instance UIDs looked up again (no other patient's upload raced into them); nothing
    # after a clinician's but its two UID lookups, if they had not answered before the store began.
    if role == "patient":
        assert sorted(seen.path for seen in after) == [series_id] + ["/tools/lookup"] * 5
    else:
        assert [seen.path for seen in after if seen.path != "/tools/lookup"] == []


async def test_uploaded_files_need_a_token(exams: Exams) -> None:
    response = await exams.client.post("/exams", files=[("file", ("a.dcm", b"x", "application/dicom"))])
    error(response, 401, "unauthorized")


async def test_malformed_multipart_is_400_bad_request(exams: Exams) -> None:
    headers = {**clinician(), "Content-Type": "multipart/form-data; boundary=xyz"}
    body = error(await exams.client.post("/exams", content=b"--xyz\r\nnot a header line", headers=headers), 400)
    assert body["code"] == "bad_request"


async def test_patient_cannot_reuse_another_patients_sop_instance_uid(exams: Exams, orthanc: Orthanc) -> None:
    """Two instances sharing a UID make Orthanc refuse WADO-RS for both: a patient must not be able to do that."""
    victim = generated(new_patient_id())
    assert (await exams.upload(victim)).status_code == 200
    attacker = new_patient_id()
    forged = generated(attacker, sop_uid=victim.sop_uid)
    files = [("file", ("forged.dcm", forged.data, "application/dicom"))]
    body = error(await exams.client.post("/exams", files=files, headers=patient(attacker)), 409, "conflict")
    assert body["details"]["failures"][0]["SOPInstanceUID"] == victim.sop_uid
    assert await stored_sop_uids(orthanc, attacker) == []
    assert (await exams.file(victim)).status_code == 200  # the victim's instance is still reachable


def _with_second_patient_id(data: bytes, second: str) -> bytes:
    """The file with a second (0010,0020) right after the first: parsers disagree on which one counts."""
    value = second.encode() + (b" " if len(second) % 2 else b"")
    marker = b"\x10\x00\x20\x00LO"
    at = data.index(marker)
    first_length = int.from_bytes(data[at + 6 : at + 8], "little")
    end = at + 8 + first_length
    return data[:end] + marker + len(value).to_bytes(2, "little") + value + data[end:]


async def test_a_file_naming_two_patients_is_refused(exams: Exams, orthanc: Orthanc) -> None:
    """A patient's file that says PatientID=victim first and PatientID=self second: Orthanc would file it under
    the victim (DCMTK keeps the first), a parser keeping the last would see the caller's own ID."""
    me, victim = new_patient_id(), new_patient_id()
    forged = _with_second_patient_id(generated(victim).data, me)
    files = [("file", ("two-ids.dcm", forged, "application/dicom"))]
    body = error(await exams.client.post("/exams", files=files, headers=patient(me)), 422, "unprocessable_content")
    assert "repeated or out of order" in body["message"]
    assert await stored_sop_uids(orthanc, victim) == []
    assert await stored_sop_uids(orthanc, me) == []


def _nested(depth: int, patient_id: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(generated(patient_id).data))
    item = pydicom.Dataset()
    item.TextValue = "leaf"
    for _ in range(depth - 1):
        outer = pydicom.Dataset()
        outer.ContentSequence = [item]
        item = outer
    ds.ContentSequence = [item]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_deeply_nested_sequences_are_refused_and_the_pacs_survives(exams: Exams) -> None:
    """Orthanc 1.10 (DCMTK) crashes on ~50 nested sequences in a 2 KB file: the gateway stops them at 16."""
    pid = new_patient_id()
    accepted = [("file", ("nested16.dcm", _nested(16, pid), "application/dicom"))]
    assert (await exams.client.post("/exams", files=accepted, headers=clinician())).status_code == 200
    for depth in (17, 60, 150):
        files = [("file", (f"nested{depth}.dcm", _nested(depth, pid), "application/dicom"))]
        body = error(await exams.client.post("/exams", files=files, headers=clinician()), 422)
        assert "nested deeper than 16" in body["message"]
    assert (await exams.client.get("/-/ready")).status_code == 200
