"""Issue 10, class 2: the PatientID the gateway checks is the PatientID Orthanc files, byte for byte.

Each crafted file goes through the real app to the real Orthanc with the attacker's patient token; then Orthanc is
asked directly (native API) what it stored and under which PatientID. The readings Orthanc 1.10 gives these bytes
(measured) are in the comments: every one differs from what pydicom makes of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.security.crafted import crafted, filed_under, stow_direct, upload_files
from tests.support.dicom_factory import generated, new_uid
from tests.support.exams_support import Exams, clinician, error, gateway, patient
from tests.support.orthanc import Orthanc

ATTACKER = "ATTACKER"

# (value bytes, crafted() options): all refused, 422 naming PatientID. Even lengths, so each hits its own rule.
REFUSED: dict[str, tuple[bytes, dict[str, Any]]] = {
    "leading NUL": (b"\x00ATTACKER ", {}),  # Orthanc: "" (cut at the NUL), the pool of ID-less instances
    "NUL inside": (b"ATTACKER\x00VICTIM ", {}),  # Orthanc: "ATTACKER"
    "NUL padding": (b"ATTACKER\x00\x00", {}),  # LO is padded with spaces, never NULs
    "leading space": (b" ATTACKER ", {}),  # Orthanc: " ATTACKER"
    "odd length": (b"ATTACKER ", {}),  # Orthanc: "ATTACKER " (keeps the space of an odd-length value)
    "two pad spaces": (b"ATTACKER  ", {}),
    "tab": (b"ATTACKER\t ", {}),
    "CR LF": (b"ATTACKER\r\n", {}),
    "DEL": (b"ATTACKER\x7f ", {}),
    "C1 control": (b"ATTACKER\x85 ", {}),
    "no-break space": (b"ATTACKER\xa0 ", {}),
    "soft hyphen": (b"ATTACKER\xad ", {}),
    "ESC under ISO 2022 IR 6": (b"\x1b(BATTACKER ", {"charset": "ISO 2022 IR 6"}),  # Orthanc: "(BATTACKER"
    "ESC to JIS X 0201": (b"\x1b(JATTACKER ", {"charset": "ISO 2022 IR 13"}),  # Orthanc keeps the ESC
    "ESC to Latin-1 G1": (b"\x1b-AATTACKER ", {"charset": "ISO 2022 IR 100"}),
    "ESC to kanji": (b"\x1b$BATTACKER\x1b(B ", {"charset": "ISO 2022 IR 6\\ISO 2022 IR 87"}),  # Orthanc: "$B..."
    "ESC without code extensions": (b"\x1b(BATTACKER ", {}),
    "Latin-1 byte, no charset": (b"ATTACKER\xe9 ", {"charset": None}),
    "invalid UTF-8": (b"ATTACKER\xe9 ", {"charset": "ISO_IR 192"}),  # Orthanc: "ATTACKER" (drops it)
    "overlong UTF-8 NUL": (b"ATTACKER\xc0\x80", {"charset": "ISO_IR 192"}),  # Orthanc: "ATTACKER"
    "zero-width space": (b"ATTACKER\xe2\x80\x8b ", {"charset": "ISO_IR 192"}),
    "byte order mark": (b"\xef\xbb\xbfATTACKER ", {"charset": "ISO_IR 192"}),
    "UTF-8 no-break space": (b"ATTACKER\xc2\xa0", {"charset": "ISO_IR 192"}),
    "GBK double byte": (b"ATTACKER\xa1\xa1", {"charset": "GBK"}),
    "GB18030 ASCII trail byte": (b"ATTACKER\x810", {"charset": "GB18030"}),  # Orthanc: "ATTACKER0"
    "unknown charset, high byte": (b"ATTACKER\xe9 ", {"charset": "BOGUS"}),  # Orthanc: "ATTACKER"
    "unassigned ISO 8859-3 byte": (b"ATTACKER\xa5 ", {"charset": "ISO_IR 109"}),  # Orthanc: "ATTACKER"
    "Latin-9 (unknown to Orthanc)": (b"ATTACKER\xa4 ", {"charset": "ISO_IR 203"}),  # Orthanc: "ATTACKER"
    "JIS X 0201 overline": (b"ATTACKER~ ", {"charset": "ISO_IR 13"}),  # Orthanc: "ATTACKER‾"
    "VR SH": (b"ATTACKER", {"vr": b"SH"}),
    "VR UN": (b"ATTACKER", {"vr": b"UN"}),
    "VR UT": (b"ATTACKER", {"vr": b"UT"}),
    "VR PN": (b"ATTACKER", {"vr": b"PN"}),
    "VR OB": (b"ATTACKER", {"vr": b"OB"}),
    "VR US": (b"ATTACKER", {"vr": b"US"}),  # Orthanc: "21569\\16724\\..."
    "two values": (b"ATTACKER\\X ", {}),
    "65 characters": (b"A" * 65 + b" ", {}),
}

# (value bytes, crafted() options, the one reading): stored, and filed under exactly that.
ACCEPTED: dict[str, tuple[bytes, dict[str, Any], str]] = {
    "plain": (b"ATTACKER", {}, "ATTACKER"),
    "implicit VR": (b"ATTACKER", {"implicit": True}, "ATTACKER"),
    "one pad space": (b"ATTACKE ", {}, "ATTACKE"),
    "inner space": (b"ATT ACKER ", {}, "ATT ACKER"),
    "Latin-1": (b"ATTACK\xc9R", {}, "ATTACKÉR"),
    "UTF-8": (b"ATTACK\xc3\x89R ", {"charset": "ISO_IR 192"}, "ATTACKÉR"),
    "Cyrillic": (b"ATTACKER\xd0 ", {"charset": "ISO_IR 144"}, "ATTACKER\u0430"),
    "Greek": (b"ATTACKER\xe1 ", {"charset": "ISO_IR 126"}, "ATTACKER\u03b1"),
    "half-width katakana": (b"ATTACKER\xb1 ", {"charset": "ISO_IR 13"}, "ATTACKERｱ"),
    "ASCII under GB18030": (b"ATTACKER", {"charset": "GB18030"}, "ATTACKER"),
    "ASCII under code extensions": (b"ATTACKER", {"charset": "ISO 2022 IR 6\\ISO 2022 IR 87"}, "ATTACKER"),
    "ASCII under an unknown charset": (b"ATTACKER", {"charset": "BOGUS"}, "ATTACKER"),
    "no charset": (b"ATTACKER", {"charset": None}, "ATTACKER"),
}


@pytest.fixture
async def exams(orthanc_url: str) -> AsyncIterator[Exams]:
    async with gateway(orthanc_url) as client:
        yield Exams(client)


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_patient_id_bytes_without_one_reading_are_422_and_nothing_is_stored(
    exams: Exams, orthanc: Orthanc, case: str
) -> None:
    value, options = REFUSED[case]
    file = crafted(value, **options)
    response = await exams.client.post("/exams", files=upload_files(file), headers=patient(ATTACKER))
    body = error(response, 422, "unprocessable_content")
    assert body["details"]["attribute"] == "PatientID"
    assert body["details"]["file"] == file.filename
    assert await filed_under(orthanc.url, file.sop_uid) == []


@pytest.mark.parametrize("case", sorted(ACCEPTED))
async def test_accepted_patient_id_is_filed_under_exactly_the_checked_id(
    exams: Exams, orthanc: Orthanc, case: str
) -> None:
    value, options, reading = ACCEPTED[case]
    file = crafted(value, **options)
    response = await exams.client.post("/exams", files=upload_files(file), headers=patient(reading))
    assert response.status_code == 200, response.text
    assert await filed_under(orthanc.url, file.sop_uid) == [reading]


# Bytes that some reader takes for the victim's ID. The victim's ID is written into them.
def _victim_variants(victim: str) -> dict[str, tuple[bytes, dict[str, Any]]]:
    v = victim.encode()
    return {
        "victim NUL": (v + b"\x00 " if len(v) % 2 else v + b"\x00\x00", {}),
        "space victim": (b" " + v + (b"" if len(v) % 2 else b" "), {}),
        "NUL victim": (b"\x00" + v + (b"" if len(v) % 2 else b" "), {}),
        "attacker NUL victim": (b"ATTACKER\x00" + v + (b"" if len(v) % 2 else b" "), {}),
        "ESC victim": (b"\x1b(B" + v + (b"" if len(v) % 2 else b" "), {"charset": "ISO 2022 IR 6"}),
        "victim, dropped byte (BOGUS)": (v + b"\xe9" + (b"" if len(v) % 2 else b" "), {"charset": "BOGUS"}),
        "victim, dropped byte (UTF-8)": (v + b"\xff" + (b"" if len(v) % 2 else b" "), {"charset": "ISO_IR 192"}),
        "victim, dropped byte (8859-3)": (v + b"\xa5" + (b"" if len(v) % 2 else b" "), {"charset": "ISO_IR 109"}),
        "victim as UN": (v + b" " * (len(v) % 2), {"vr": b"UN"}),
        "victim as SH": (v + b" " * (len(v) % 2), {"vr": b"SH"}),
        "victim as OB": (v + b" " * (len(v) % 2), {"vr": b"OB"}),
    }


async def test_attacker_cannot_file_into_a_victims_study(exams: Exams, orthanc: Orthanc) -> None:
    """A victim's study exists (and one without PatientID, stored around the gateway, which Orthanc pools under the
    empty ID); the attacker uploads into each study's UIDs files whose PatientID bytes may read as the victim's."""
    victim = f"VICTIM{new_uid()[-10:]}"
    study, series = new_uid(), new_uid()
    assert (await exams.upload(generated(victim, study_uid=study, series_uid=series))).status_code == 200
    nobody_study, nobody_series = new_uid(), new_uid()
    nobody = crafted(b"", study_uid=nobody_study, series_uid=nobody_series)
    assert await stow_direct(orthanc.dicomweb_url, nobody.data) == 200
    before = await _study_instances(orthanc, study), await _study_instances(orthanc, nobody_study)
    cases = [(name, value, options, study, series) for name, (value, options) in _victim_variants(victim).items()]
    cases += [(f"{name} (ID-less victim)", value, options, nobody_study, nobody_series)
              for name, (value, options) in _victim_variants("ATTACKER").items()]
    for name, value, options, into_study, into_series in cases:
        file = crafted(value, study_uid=into_study, series_uid=into_series, **options)
        response = await exams.client.post("/exams", files=upload_files(file), headers=patient(ATTACKER))
        assert response.status_code == 422, (name, response.text)
        assert response.json()["error"]["details"]["attribute"] == "PatientID", name
        assert await filed_under(orthanc.url, file.sop_uid) == [], name
    after = await _study_instances(orthanc, study), await _study_instances(orthanc, nobody_study)
    assert after == before
    assert len(before[0]) == 1
    assert len(before[1]) == 1


async def _study_instances(orthanc: Orthanc, study: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{orthanc.dicomweb_url}/studies/{study}/instances")
    return sorted(ds["00080018"]["Value"][0] for ds in (answer.json() if answer.content else []))


@pytest.mark.parametrize("value", ["ATTACKER\x00", " ATTACKER", "ATTACKER\u00a0", "ATTACKER\u200b", "ATTACKER\x1b(B",
                                   "ATTACKER\ufffd", "ATTACKER\x85", "ATTACKER  ", "ATTACKER\t", "\u3000ATTACKER"])
async def test_search_parameters_follow_the_same_rule(exams: Exams, value: str) -> None:
    body = error(await exams.studies(value), 400, "bad_request")
    assert body["details"]["parameter"] == "PatientId"
    accession = value[:12]
    body = error(await exams.studies("ATTACKER", {"AccessionNumber": accession}, headers=clinician()), 400)
    assert body["details"]["parameter"] == "AccessionNumber"
    file_route = f"/exams/studies/{new_uid()}/series/{new_uid()}/instances"
    body = error(await exams.client.get(file_route, params={"PatientId": value}, headers=clinician()), 400)
    assert body["details"]["parameter"] == "PatientId"


async def test_search_parameters_keep_their_one_pad_space(exams: Exams) -> None:
    assert (await exams.studies("ATTACKER ")).status_code == 200
    assert (await exams.studies("ATTACKER", {"AccessionNumber": "ACC1 "})).status_code == 200
