"""Issue 10, class 4: Deflated Explicit VR Little Endian never gives 500 or unbounded memory.

Uploads: refused with 422 before a byte is inflated (PS3.5 §A.5 deflate can inflate a few KB to GBs; the structure
check refuses deflated files anyway). Downloads: the PatientID probe inflates a stored deflated file incrementally,
never past its bound, so a good one comes back byte for byte and a bomb is a clear 502.
"""

from __future__ import annotations

import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.dicom.part10 import PatientIdProbe, configure_pydicom
from tests.security.crafted import (
    deflate_bomb,
    deflated,
    deflated_instance,
    filed_under,
    stow_direct,
    upload_files,
)
from tests.support.exams_support import Exams, clinician, error, gateway, patient
from tests.support.orthanc import Orthanc
from tests.support.servers import serve

GIB = 1 << 30
BOUND = 64 * 1024 * 1024


@pytest.fixture(autouse=True)
def _pydicom_as_the_gateway_configures_it() -> None:
    configure_pydicom()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A raw deflate stream of 1 MB that inflates to 1 GiB."""
    return deflate_bomb(GIB)


@pytest.fixture
async def exams(orthanc_url: str) -> AsyncIterator[Exams]:
    async with gateway(orthanc_url) as client:
        yield Exams(client)


def _cases(bomb: bytes) -> dict[str, bytes]:
    valid, at = deflated_instance("DEFLATE-TEST")
    stream = valid.data[at:]
    return {
        "valid": stream,  # even a good one: deflated uploads are not accepted
        "corrupt": b"\xff\xfe" + stream[2:],
        "garbage": bytes(range(256)) * 8,
        "truncated": stream[: len(stream) // 2],
        "bomb": bomb,
        "zlib header instead of raw deflate": zlib.compress(b"\x00" * 4096),
        "empty": b"",
    }


@pytest.mark.parametrize("case", ["valid", "corrupt", "garbage", "truncated", "bomb",
                                  "zlib header instead of raw deflate", "empty"])
@pytest.mark.parametrize("role", ["clinician", "patient"])
async def test_deflated_upload_is_422_before_anything_is_inflated(
    exams: Exams, orthanc: Orthanc, bomb: bytes, case: str, role: str
) -> None:
    file = deflated(_cases(bomb)[case])
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        headers = clinician() if role == "clinician" else patient("DEFLATE-TEST")
        response = await exams.client.post("/exams", files=upload_files(file), headers=headers)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    body = error(response, 422, "unprocessable_content")
    assert body["details"]["reason"] == "deflated files are not accepted"
    assert peak < BOUND + 8 * len(file.data), peak  # the upload itself is held (a few copies), never its inflation
    assert await filed_under(orthanc.url, file.sop_uid) == []


def test_probe_reads_a_deflated_patient_id_and_stops_a_bomb_within_its_bound(bomb: bytes) -> None:
    valid, at = deflated_instance("DEFLATED-PATIENT")
    for size in (1, 7, 100, 4096, len(valid.data)):
        probe = PatientIdProbe()
        consumed = 0
        while not probe.done:
            probe.feed(valid.data[consumed : consumed + size], final=consumed + size >= len(valid.data))
            consumed += size
        assert probe.patient_id == "DEFLATED-PATIENT"
    data = valid.data[:at] + bomb
    tracemalloc.start()
    try:
        probe = PatientIdProbe()
        with pytest.raises(ValueError, match=r"cannot be read|no PatientID"):
            _feed_all(probe, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BOUND, peak
    for damaged in (valid.data[:at] + b"\xff" * 64, valid.data[: at + 20]):
        probe = PatientIdProbe()
        with pytest.raises(ValueError, match=r"cannot be read|cut short"):
            probe.feed(damaged, final=True)


def _feed_all(probe: PatientIdProbe, data: bytes) -> None:
    for start in range(0, len(data), 65536):
        probe.feed(data[start : start + 65536], final=start + 65536 >= len(data))


async def test_deflated_file_stored_around_the_gateway_downloads_byte_for_byte(
    exams: Exams, orthanc: Orthanc
) -> None:
    pid = "DEFLATED-STORED"
    valid, _ = deflated_instance(pid)
    assert await stow_direct(orthanc.dicomweb_url, valid.data) == 200
    path = f"/exams/studies/{valid.study_uid}/series/{valid.series_uid}/instance/{valid.sop_uid}"
    response = await exams.client.get(path, params={"PatientId": pid, "fileType": "application/dicom"},
                                      headers=patient(pid))
    assert response.status_code == 200, response.text
    assert response.content[128:] == valid.data[128:]
    other = await exams.client.get(path, params={"PatientId": "SOMEONE-ELSE", "fileType": "application/dicom"},
                                   headers=patient("SOMEONE-ELSE"))
    error(other, 404, "not_found")


@pytest.mark.parametrize("case", ["bomb", "corrupt", "truncated"])
async def test_deflate_bomb_or_damage_from_the_pacs_is_a_clear_502_in_bounded_memory(
    bomb: bytes, case: str
) -> None:
    """A PACS stand-in whose WADO-RS hands out a deflated file that is a bomb or damaged."""
    valid, at = deflated_instance("BOMB-PATIENT")
    stream = {"bomb": bomb, "corrupt": b"\xff\xfe" + valid.data[at + 2 :], "truncated": valid.data[at : at + 30]}[case]
    data = valid.data[:at] + stream
    boundary = "bomb0boundary"
    listed = [{"00100020": {"vr": "LO", "Value": ["BOMB-PATIENT"]},
               "0020000E": {"vr": "UI", "Value": [valid.series_uid]}}]

    async def qido(request: Request) -> Response:
        return Response(json.dumps(listed), media_type="application/dicom+json")

    async def wado(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            for start in range(0, len(data), 65536):
                yield data[start : start + 65536]
            yield f"\r\n--{boundary}--\r\n".encode()

        return StreamingResponse(body(), media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')

    study_path = f"/dicom-web/studies/{valid.study_uid}/series"
    instance_path = f"{study_path}/{valid.series_uid}/instances/{valid.sop_uid}"
    upstream = Starlette(routes=[Route(study_path, qido), Route(instance_path, wado)])
    with serve(upstream) as server:
        async with gateway(f"{server.url}/dicom-web", pacs_profile="standard") as client:
            tracemalloc.start()
            try:
                response = await client.get(
                    f"/exams/studies/{valid.study_uid}/series/{valid.series_uid}/instance/{valid.sop_uid}",
                    params={"PatientId": "BOMB-PATIENT", "fileType": "application/dicom"}, headers=clinician())
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    body = error(response, 502, "upstream_error")
    assert "header cannot be read" in body["message"] or "cannot be read" in str(body["details"])
    assert peak < BOUND, peak
