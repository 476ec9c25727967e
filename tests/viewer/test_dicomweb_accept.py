"""`/dicomweb` content negotiation (PS3.18 §8.7): an `Accept` that no representation of the resource satisfies is
406 naming what is available, before anything goes upstream; the ranges clients and browsers send still work.

Before, `Accept: text/html` on an instance reached Orthanc, whose refusal came back as 400 (and `text/html` on a
search was ignored and answered JSON)."""

from __future__ import annotations

import time

import pytest

from gateway.edge.accept import MAX_ACCEPT_BYTES, MediaType, acceptable
from tests.support.dicom_factory import generated
from tests.support.exams_support import Exams, clinician, error, gateway, new_patient_id
from tests.support.recorder import RecordingProxy

DICOM_PARTS = MediaType("multipart", "related", "application/dicom")
DICOM = MediaType("application", "dicom")
JSON = MediaType("application", "dicom+json")
FRAMES = MediaType("multipart", "related", "application/octet-stream")


@pytest.mark.parametrize(("accept", "offered", "expected"), [
    (None, [JSON], True),
    ("", [JSON], True),
    ("*/*", [JSON], True),
    ("application/*", [JSON], True),
    ("application/dicom+json", [JSON], True),
    ("Application/DICOM+JSON; charset=utf-8", [JSON], True),
    ("text/html", [JSON], False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", [JSON], True),  # a browser's
    ("application/dicom+json;q=0", [JSON], False),
    ("application/dicom+json;q=0, text/html", [JSON], False),
    ("application/dicom+json;q=abc", [JSON], False),
    ("multipart/related; type=application/dicom+xml", [JSON], False),
    ('multipart/related; type="application/dicom"; transfer-syntax=*', [DICOM_PARTS], True),
    ("multipart/related; type=application/dicom", [DICOM_PARTS], True),
    ("multipart/related", [DICOM_PARTS], True),
    ("multipart/related; type=application/octet-stream", [DICOM_PARTS], False),
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", [FRAMES], True),
    ('multipart/related; type="application/*"', [FRAMES], True),
    ("application/dicom", [DICOM_PARTS, DICOM], True),
    ("application/dicom", [DICOM_PARTS], False),
    ("application/*", [DICOM_PARTS], False),
    ("image/*", [MediaType("image", "jpeg")], True),
    ('multipart/related; type="a,b", text/html', [DICOM_PARTS], False),
    ("garbage", [JSON], False),
])
def test_acceptable(accept: str | None, offered: list[MediaType], expected: bool) -> None:
    assert acceptable(accept, offered) is expected


@pytest.mark.parametrize(("suffix", "accept"), [
    ("", "text/html"),
    ("", "image/jpeg"),
    ("/metadata", "application/dicom+xml"),
    ("/metadata", "text/html"),
    ("/rendered", "application/dicom"),
    ("/frames/1", "text/html"),
    ("/frames/1", 'multipart/related; type="application/dicom"'),
])
async def test_an_accept_nothing_satisfies_is_406_before_the_pacs(
    recorder: tuple[RecordingProxy, str], suffix: str, accept: str
) -> None:
    proxy, url = recorder
    instance = generated(new_patient_id("ACCEPT"))
    path = f"studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}"
    async with gateway(url) as client:
        assert (await Exams(client).upload(instance)).status_code == 200
        before = len(proxy.seen)
        answer = await client.get(f"/dicomweb/{path}{suffix}", headers={**clinician(), "Accept": accept})
        body = error(answer, 406, "not_acceptable")
        assert body["details"]["accept"] == accept
        assert body["details"]["available"]
        assert len(proxy.seen) == before  # nothing went upstream
        search = await client.get("/dicomweb/studies", params={"StudyInstanceUID": instance.study_uid},
                                  headers={**clinician(), "Accept": "text/html"})
        error(search, 406, "not_acceptable")


@pytest.mark.parametrize(("suffix", "accept", "media_type"), [
    ("", "*/*", "multipart/related"),
    ("", "application/dicom", "application/dicom"),
    ("", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "multipart/related"),
    ("/metadata", "application/json", "application/dicom+json"),
    ("/rendered", "image/*", "image/jpeg"),
    ("/frames/1", "multipart/related; type=application/octet-stream; transfer-syntax=*", "multipart/related"),
])
async def test_the_ranges_clients_send_are_served(
    recorder: tuple[RecordingProxy, str], suffix: str, accept: str, media_type: str
) -> None:
    _, url = recorder
    instance = generated(new_patient_id("ACCEPT"))
    path = f"studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}"
    async with gateway(url) as client:
        assert (await Exams(client).upload(instance)).status_code == 200
        answer = await client.get(f"/dicomweb/{path}{suffix}", headers={**clinician(), "Accept": accept})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith(media_type)


@pytest.mark.parametrize("accept", [
    "a/b;" + " " * 2000 + "x",
    "multipart/related; type=application/octet-stream" + "a" * 1900 + ", */*",
    ";" * 2040,
    '"' * 2040,
    "a/b; q=" + "9" * 2000,
])
def test_a_crafted_accept_is_read_in_linear_time(accept: str) -> None:
    """A header the old regular expressions backtracked on (0.6-1.3 s of the event loop at 16 000 characters)."""
    started = time.perf_counter()
    for _ in range(20):
        acceptable(accept, [JSON, FRAMES])
    assert time.perf_counter() - started < 0.5


async def test_an_accept_longer_than_the_cap_is_400_before_the_pacs(recorder: tuple[RecordingProxy, str]) -> None:
    proxy, url = recorder
    async with gateway(url) as client:
        answer = await client.get("/dicomweb/studies", headers={**clinician(), "Accept": "a/b;" + " " * 4000 + "x"})
        body = error(answer, 400, "bad_request")
        assert body["details"] == {"header": "Accept", "max_length": MAX_ACCEPT_BYTES}
    assert proxy.seen == []
