"""File meta information that two parsers read differently is refused before anything is stored.

Found in review: a meta with two Transfer Syntax UIDs (Implicit VR first, Explicit VR last). pydicom and the
gateway's own reader keep the last, DCMTK (Orthanc) the first, and a dataset built to read both ways showed the
gateway the attacker's own file while Orthanc stored a hidden one, filed under the victim in the victim's study.
Also refused: a (0002,0000) group length that disagrees with where the meta ends (parsers then start the dataset at
different offsets), and Deflated first / Explicit last (a way around the refusal of deflated files).
"""

from __future__ import annotations

import struct

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from tests.callbacks.test_callbacks import stow_direct
from tests.support.dicom_factory import generated, gradient_row, image_dataset
from tests.support.exams_support import Exams, error, gateway, new_patient_id, patient
from tests.support.orthanc import Orthanc

IMPLICIT, EXPLICIT, DEFLATED = b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.1.99"


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def encoded(ds: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def two_readings(shown: Dataset, hidden: Dataset, syntaxes: tuple[bytes, ...], length_delta: int = 0) -> bytes:
    """A Part 10 file that reads as `shown` under Explicit VR and as `hidden` under Implicit VR."""
    meta = (struct.pack("<HH", 2, 1) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"
            + element(0x00020002, b"UI", str(shown.SOPClassUID).encode())
            + element(0x00020003, b"UI", str(shown.SOPInstanceUID).encode())
            + b"".join(element(0x00020010, b"UI", syntax) for syntax in syntaxes)
            + element(0x00020012, b"UI", b"1.2.3.4.5"))
    head = (b"\x00" * 128 + b"DICM" + struct.pack("<HH", 2, 0) + b"UL"
            + struct.pack("<HI", 4, len(meta) + length_delta) + meta)
    # (0008,0003): explicit, OB of length 0; implicit, the same bytes give a length of 0x424F ("OB\0\0").
    first = struct.pack("<HH", 0x0008, 0x0003) + b"OB\x00\x00" + struct.pack("<I", 0)
    shown_bytes = encoded(shown, implicit=False)
    hidden_at = 8 + 0x424F
    pad = hidden_at - (len(first) + len(shown_bytes) + 12)
    rest = b"\x00" * pad + encoded(hidden, implicit=True)
    swallow = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", len(rest))
    return head + first + shown_bytes + swallow + rest


@pytest.mark.parametrize(("syntaxes", "delta"), [
    ((IMPLICIT, EXPLICIT), 0), ((DEFLATED, EXPLICIT), 0), ((EXPLICIT, IMPLICIT), 0), ((IMPLICIT,), 2),
    ((EXPLICIT,), -2),
], ids=["implicit-then-explicit", "deflated-then-explicit", "explicit-then-implicit", "group-length-long",
        "group-length-short"])
async def test_a_file_with_two_readings_is_422_and_nothing_reaches_the_victims_study(
    orthanc: Orthanc, syntaxes: tuple[bytes, ...], delta: int
) -> None:
    attacker, victim_id = new_patient_id("ATTACKER"), new_patient_id("VICTIM")
    victim = generated(victim_id)
    stow_direct(orthanc.dicomweb_url, [victim.data])
    shown = image_dataset(attacker)
    hidden = image_dataset(victim_id, study_uid=victim.study_uid, description="injected")
    hidden.PixelData = gradient_row(hidden.Columns) * hidden.Rows
    data = two_readings(shown, hidden, syntaxes, delta)
    async with gateway(orthanc.dicomweb_url) as client:
        files = [("file", ("two.dcm", data, "application/dicom"))]
        error(await client.post("/exams", files=files, headers=patient(attacker)), 422, "unprocessable_content")
        series = await Exams(client).series(victim.study_uid, victim_id, headers=patient(victim_id))
    assert series.status_code == 200
    assert [ds["0020000E"]["Value"][0] for ds in series.json()] == [victim.series_uid]
    found = httpx.post(f"{orthanc.url}/tools/lookup", content=victim.study_uid).json()
    assert len(found) == 1  # still only the victim's study under its UID
    assert httpx.get(f"{orthanc.dicomweb_url}/studies", params={"PatientID": attacker}).json() == []
