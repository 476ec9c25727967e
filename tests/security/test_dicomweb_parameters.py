"""`/dicomweb` searches are checked at the edge: a parameter the PACS would fail on is 400 naming it, and nothing
goes upstream (the recording proxy in front of the real Orthanc sees no search).

Before, each of these reached the PACS as sent, and Orthanc's refusal came back as 502 (or, for unknown attributes,
was silently ignored and the search ran wider than asked).
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.exams_support import clinician, error, gateway, patient
from tests.support.recorder import RecordingProxy

VIEWER_SECRET = "viewer-secret-for-the-parameter-tests-0123456789"

BAD = [
    ({"limit": "abc"}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"limit": "100000"}, "limit"),
    ({"limit": "²"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "9" * 40}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"StudyInstanceUID": "*"}, "StudyInstanceUID"),
    ({"StudyInstanceUID": "1.*"}, "StudyInstanceUID"),
    ({"0020000D": "1.2\\1.3"}, "0020000D"),
    ({"StudyDate": "2020"}, "StudyDate"),
    ({"StudyDate": "20201301"}, "StudyDate"),
    ({"StudyTime": "25:00"}, "StudyTime"),
    ({"includefield": "NotAKeyword"}, "includefield"),
    ({"Foo": "bar"}, "Foo"),
    ({"FFFF0000": "x"}, "FFFF0000"),
    ({"PatientName": "A" * 5000}, "PatientName"),
    ({"PatientName": "DOE\x00"}, "PatientName"),
    ({"ReferencedStudySequence": "x"}, "ReferencedStudySequence"),
    ({"Rows": "*"}, "Rows"),
    ({"00280010": "1*"}, "00280010"),
    ({"PatientAge": "*"}, "PatientAge"),
    ({"NumberOfFrames": "a?"}, "NumberOfFrames"),
]


@pytest.mark.parametrize("caller", ["clinician", "patient"])
@pytest.mark.parametrize(("params", "named"), BAD, ids=[n for _, n in BAD])
async def test_a_bad_search_parameter_is_400_naming_it_and_nothing_goes_upstream(
    recorder: tuple[RecordingProxy, str], caller: str, params: dict[str, str], named: str
) -> None:
    proxy, url = recorder
    headers = clinician() if caller == "clinician" else patient("PARAMS-PATIENT")
    async with gateway(url) as client:
        for level in ("studies", "series", "instances"):
            body = error(await client.get(f"/dicomweb/{level}", params=params, headers=headers), 400, "bad_request")
            assert body["details"]["parameter"] == named
    assert proxy.seen == []


async def test_thousands_of_parameters_are_400_before_the_pacs(recorder: tuple[RecordingProxy, str]) -> None:
    proxy, url = recorder
    query = "&".join(f"PatientName=A{i}" for i in range(3000))
    async with gateway(url) as client:
        body = error(await client.get(f"/dicomweb/studies?{query}", headers=clinician()), 400)
    assert body["details"]["parameter"] == "query"
    assert proxy.seen == []


async def test_known_parameters_pass_on_by_keyword_and_the_scope_is_added(
    recorder: tuple[RecordingProxy, str]
) -> None:
    proxy, url = recorder
    async with gateway(url) as client:
        answer = await client.get("/dicomweb/studies", headers=patient("PARAMS-PATIENT"), params=[
            ("00080020", "20200101-20201231"), ("limit", "5"), ("offset", "0"), ("includefield", "StudyDescription"),
            ("fuzzymatching", "false"), ("PatientName", "DOE*")])
    assert answer.status_code == 200
    [search] = [seen for seen in proxy.seen if seen.path == "/dicom-web/studies"]
    sent = httpx.QueryParams(search.query)
    assert sent.get("StudyDate") == "20200101-20201231"
    assert sent.get("PatientName") == "DOE*"
    assert sent.get("PatientID") == "PARAMS-PATIENT"  # the scope, whatever the caller asked
    assert (sent.get("limit"), sent.get("offset"), sent.get("fuzzymatching")) == ("5", "0", "false")
    assert "StudyDescription" in sent.get_list("includefield")


async def test_a_patient_filter_for_someone_else_narrows_to_nothing(recorder: tuple[RecordingProxy, str]) -> None:
    proxy, url = recorder
    async with gateway(url) as client:
        for name in ("PatientID", "00100020"):
            answer = await client.get("/dicomweb/studies", params={name: "SOMEONE-ELSE"},
                                      headers=patient("PARAMS-PATIENT"))
            assert (answer.status_code, answer.json()) == (200, [])
    assert proxy.seen == []
