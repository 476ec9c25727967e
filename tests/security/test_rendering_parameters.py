"""Rendered images: `viewport`, `quality` and `window` are checked and bounded before the PACS builds anything.

Orthanc 1.10 renders whatever it is asked: `viewport=66000,66000` overflows and kills the whole Orthanc process
(a segfault in civetweb-worker, found in review with an ordinary patient token), 20000x20000 costs it ~400 MB, and a
zero size makes it drop the connection. The recording proxy shows that none of these reaches it any more; valid
values still render.
"""

from __future__ import annotations

import uuid

import pytest

from tests.callbacks.test_callbacks import stow_direct
from tests.support.dicom_factory import generated
from tests.support.exams_support import error, gateway, patient
from tests.support.recorder import RecordingProxy

BAD = [
    ("viewport", "66000,66000"), ("viewport", "99999,99999"), ("viewport", "20000,20000"), ("viewport", "0,0"),
    ("viewport", "2049,10"), ("viewport", "-1,64"), ("viewport", "64"), ("viewport", "64,64,0,0"),
    ("viewport", "64,64,0,0,0,10"), ("viewport", "64,64,-1,0,10,10"), ("viewport", "1.5,2"), ("viewport", "a,b"),
    ("quality", "0"), ("quality", "101"), ("quality", "high"),
    ("window", "40"), ("window", "40,400"), ("window", "40,0"), ("window", "40,-5,linear"),
    ("window", "40,400,cubic"), ("window", "a,b"),
]


@pytest.fixture(scope="module")
def image(orthanc_url: str) -> tuple[str, str, str, str]:
    item = generated(f"RENDER-{uuid.uuid4().hex[:8]}", rows=64, columns=64)
    stow_direct(orthanc_url, [item.data])
    return item.patient_id, item.study_uid, item.series_uid, item.sop_uid


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v}" for n, v in BAD])
async def test_a_rendering_parameter_out_of_bounds_is_400_and_never_reaches_the_pacs(
    recorder: tuple[RecordingProxy, str], image: tuple[str, str, str, str], name: str, value: str
) -> None:
    proxy, url = recorder
    patient_id, study, series, sop = image
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    async with gateway(url) as client:
        for path in (f"{base}/rendered", f"{base}/thumbnail", f"{base}/frames/1/rendered",
                     f"/dicomweb/studies/{study}/rendered"):
            body = error(await client.get(path, params={name: value}, headers=patient(patient_id)), 400)
            assert body["details"] == {"parameter": name}
    assert not [seen for seen in proxy.seen if "rendered" in seen.path]


async def test_valid_rendering_parameters_still_render(
    recorder: tuple[RecordingProxy, str], image: tuple[str, str, str, str]
) -> None:
    proxy, url = recorder
    patient_id, study, series, sop = image
    async with gateway(url) as client:
        for params in ({"viewport": "32,16"}, {"viewport": "32,32,0,0,64,64"}, {"quality": "50"},
                       {"window": "40,400,linear"}, {"window": "40.5,400.25,sigmoid"}):
            answer = await client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered",
                                      params=params, headers=patient(patient_id))
            assert answer.status_code == 200, (params, answer.text)
            assert answer.headers["content-type"] == "image/jpeg"
    assert len([seen for seen in proxy.seen if seen.path.endswith("/rendered")]) == 5
