"""GET /exams/.../instance/{instance}: the stored file and a rendered thumbnail, against the real Orthanc (issue 3)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import pydicom
import pytest
from PIL import Image

from tests.support.dicom_factory import BUNDLED, Instance, bundled, generated, new_uid
from tests.support.exams_support import Exams, error, gateway, new_patient_id, patient
from tests.support.orthanc import Orthanc
from tests.support.recorder import RecordingProxy


@pytest.fixture
async def exams(orthanc_url: str) -> AsyncIterator[Exams]:
    async with gateway(orthanc_url) as client:
        yield Exams(client)


async def stored(exams: Exams, instance: Instance) -> Instance:
    response = await exams.upload(instance)
    assert response.status_code == 200, response.text
    return instance


@pytest.mark.parametrize("kind", sorted(BUNDLED))
async def test_bundled_files_come_back_byte_identical_but_the_preamble(exams: Exams, kind: str) -> None:
    instance = await stored(exams, bundled(kind, new_patient_id()))
    response = await exams.file(instance)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["content-disposition"] == f'attachment; filename="{instance.sop_uid}.dcm"'
    assert int(response.headers["content-length"]) == len(instance.data)
    assert response.content[:128] == bytes(128)
    assert response.content[128:] == instance.without_preamble


@pytest.mark.parametrize(("rows", "columns", "frames"), [(64, 48, 1), (256, 256, 12), (1024, 1024, 2)])
async def test_generated_files_come_back_byte_identical_but_the_preamble(
    exams: Exams, rows: int, columns: int, frames: int
) -> None:
    instance = await stored(exams, generated(new_patient_id(), rows=rows, columns=columns, frames=frames))
    response = await exams.file(instance)
    assert response.status_code == 200
    assert response.content == bytes(128) + instance.without_preamble


@pytest.mark.parametrize(("kind", "size"), [("ct", None), ("mr", "64"), ("j2k", "300"), ("rle_multiframe", "2048"),
                                            ("ybr_multiframe", "1"), ("jpeg_baseline", "100")])
async def test_thumbnails_are_jpegs_whose_longest_edge_is_the_size(exams: Exams, kind: str, size: str | None) -> None:
    instance = await stored(exams, bundled(kind, new_patient_id()))
    response = await exams.file(instance, file_type="image/jpeg", params={"size": size} if size else None)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    image.verify()
    expected = int(size or 256)
    assert max(image.size) == expected
    # The aspect ratio is kept (JPEG2000.dcm is 256 wide, 1024 high).
    width, height = image.size
    assert abs(width / height - instance.columns / instance.rows) < 0.05 or expected < 8


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"fileType": "image/png"}, "fileType"), ({"size": "0"}, "size"), ({"size": "2049"}, "size"),
     ({"size": "big"}, "size"), ({"format": "jpeg"}, "format")],
)
async def test_bad_retrieval_parameters_are_400(exams: Exams, params: dict[str, str], parameter: str) -> None:
    instance = generated(new_patient_id())  # never stored: validation comes first
    response = await exams.file(instance, params=params)
    assert error(response, 400, "bad_request")["details"]["parameter"] == parameter


async def test_file_type_is_mandatory(exams: Exams) -> None:
    instance = generated(new_patient_id())
    path = f"/exams/studies/{instance.study_uid}/series/{instance.series_uid}/instance/{instance.sop_uid}"
    response = await exams.client.get(path, params={"PatientId": instance.patient_id},
                                      headers={"Authorization": patient(instance.patient_id)["Authorization"]})
    assert error(response, 400)["details"]["parameter"] == "fileType"


@pytest.mark.parametrize("file_type", ["application/dicom", "image/jpeg"])
async def test_unknown_or_foreign_instances_are_the_same_404(exams: Exams, file_type: str) -> None:
    mine, theirs = generated(new_patient_id()), generated(new_patient_id())
    await stored(exams, mine)
    await stored(exams, theirs)
    me = mine.patient_id
    foreign = error(await exams.file(theirs, patient_id=me, file_type=file_type), 404, "not_found")
    missing = error(await exams.file(generated(me), file_type=file_type), 404, "not_found")
    assert foreign["message"] == missing["message"]
    assert set(foreign["details"]) == set(missing["details"])
    # Their instance named under my study and series is not found either.
    forged = Instance(theirs.data, me, mine.study_uid, mine.series_uid, theirs.sop_uid, 64, 48)
    error(await exams.file(forged, file_type=file_type), 404)


async def test_patient_downloads_own_file_only(recorder: tuple[RecordingProxy, str]) -> None:
    proxy, url = recorder
    mine, theirs = generated(new_patient_id()), generated(new_patient_id())
    async with gateway(url) as client:
        exams = Exams(client)
        await stored(exams, mine)
        await stored(exams, theirs)
        assert (await exams.file(mine, headers=patient(mine.patient_id))).status_code == 200
        proxy.seen.clear()
        error(await exams.file(theirs, headers=patient(mine.patient_id)), 403)
        error(await exams.file(theirs, patient_id=mine.patient_id, headers=patient(mine.patient_id),
                               file_type="image/jpeg"), 404)
    # The upstream was asked only about my patient ID, never about theirs, and nothing was retrieved.
    assert all(theirs.patient_id not in target for target in proxy.targets())
    assert not any("/rendered" in seen.path or seen.path.endswith(theirs.sop_uid) for seen in proxy.seen)


async def test_a_uid_shared_by_two_patients_never_serves_the_other_patients_file(
    exams: Exams, orthanc: Orthanc
) -> None:
    """Data that reached the PACS without the gateway (C-STORE from a modality) may reuse a SOP Instance UID.

    Orthanc then refuses WADO for that UID (404); either way the gateway checks the file's own PatientID.
    """
    victim = await stored(exams, generated(new_patient_id()))
    attacker_id = new_patient_id()
    twin = generated(attacker_id)
    twin_data = _with_uids(twin.data, victim)
    async with httpx.AsyncClient() as direct:  # straight into the PACS, bypassing the gateway's duplicate check
        boundary = "twin"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + twin_data
                + f"\r\n--{boundary}--\r\n".encode())
        stow = await direct.post(f"{orthanc.dicomweb_url}/studies", content=body,
                                 headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                          f"boundary={boundary}"})
        assert stow.status_code == 200
    as_attacker = Instance(twin_data, attacker_id, victim.study_uid, victim.series_uid, victim.sop_uid, 64, 48)
    response = await exams.file(as_attacker, headers=patient(attacker_id))
    error(response, 404)
    assert victim.patient_id.encode() not in response.content


def _with_uids(data: bytes, like: Instance) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = like.study_uid, like.series_uid, like.sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(like.sop_uid)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_download_streams_without_reading_the_whole_upstream_answer_first(exams: Exams) -> None:
    instance = await stored(exams, generated(new_patient_id(), rows=512, columns=512, frames=16))  # 8 MiB
    path = f"/exams/studies/{instance.study_uid}/series/{instance.series_uid}/instance/{instance.sop_uid}"
    received = 0
    async with exams.client.stream("GET", path, params={"PatientId": instance.patient_id,
                                                        "fileType": "application/dicom"},
                                   headers=patient(instance.patient_id)) as response:
        assert response.status_code == 200
        assert "content-length" in response.headers
        async for chunk in response.aiter_raw():
            received += len(chunk)
    assert received == len(instance.data)


async def test_retrieval_of_a_missing_study_is_404_not_an_upstream_error(exams: Exams) -> None:
    instance = Instance(b"", new_patient_id(), new_uid(), new_uid(), new_uid(), 1, 1)
    error(await exams.file(instance), 404, "not_found")
    error(await exams.file(instance, file_type="image/jpeg"), 404, "not_found")
