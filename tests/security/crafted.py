"""Part 10 files whose PatientID element is written byte by byte: any value bytes, VR, character set, syntax.

pydicom encodes what it is given; these files need what it would not write (a PatientID of VR UN, an ESC sequence
under ISO_IR 100, a NUL in the middle), so the element is spliced into a file pydicom wrote around a placeholder.
"""

from __future__ import annotations

import io
import uuid
import zlib
from dataclasses import dataclass

import httpx
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.upstream.orthanc import orthanc_id
from tests.support.dicom_factory import gradient_row, image_dataset, new_uid

_PLACEHOLDER = "PLACEHOLDER-PATIENT-ID-012345678"  # even length: no padding byte
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True)
class Crafted:
    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str

    @property
    def filename(self) -> str:
        return f"{self.sop_uid}.dcm"


def crafted(value: bytes, *, vr: bytes = b"LO", charset: str | None = "ISO_IR 100", implicit: bool = False,
            study_uid: str | None = None, series_uid: str | None = None, rows: int = 8, columns: int = 8) -> Crafted:
    """A small image whose (0010,0020) holds exactly `value` (no padding added) with `vr` (explicit VR only).

    `charset` None leaves (0008,0005) out (the default repertoire)."""
    ds = image_dataset(_PLACEHOLDER, study_uid=study_uid or new_uid(), series_uid=series_uid or new_uid(),
                       rows=rows, columns=columns)
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    ds.PixelData = gradient_row(columns) * rows
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True, implicit_vr=implicit)
    data = out.getvalue()
    placeholder = _PLACEHOLDER.encode()
    if implicit:
        old = b"\x10\x00\x20\x00" + len(placeholder).to_bytes(4, "little") + placeholder
        new = b"\x10\x00\x20\x00" + len(value).to_bytes(4, "little") + value
    else:
        old = b"\x10\x00\x20\x00LO" + len(placeholder).to_bytes(2, "little") + placeholder
        if vr in _LONG_VRS:
            new = b"\x10\x00\x20\x00" + vr + b"\x00\x00" + len(value).to_bytes(4, "little") + value
        else:
            new = b"\x10\x00\x20\x00" + vr + len(value).to_bytes(2, "little") + value
    assert data.count(old) == 1
    data = data.replace(old, new)
    return Crafted(bytes(128) + data[128:], str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                   str(ds.SOPInstanceUID))


def deflated(stream: bytes, patient_id: str = "DEFLATE-TEST") -> Crafted:
    """A Part 10 file of Deflated Explicit VR Little Endian whose deflate stream is `stream` (corrupt, cut short, a
    bomb: the point is what a reader does with it)."""
    instance, at = deflated_instance(patient_id)
    return Crafted(instance.data[:at] + stream, instance.study_uid, instance.series_uid, instance.sop_uid)


def deflate_bomb(inflated_size: int) -> bytes:
    """A raw deflate stream of zeros that inflates to `inflated_size` bytes (about 1 KB per MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated_size >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def deflated_instance(patient_id: str, *, study_uid: str | None = None) -> tuple[Crafted, int]:
    """A valid Deflated Explicit VR Little Endian image (pydicom deflates it) and where its deflate stream starts."""
    ds = image_dataset(patient_id, study_uid=study_uid or new_uid(), rows=8, columns=8)
    ds.PixelData = gradient_row(8) * 8
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    data = bytes(128) + out.getvalue()[128:]
    file = io.BytesIO(data)
    pydicom.filereader.read_preamble(file, False)
    pydicom.filereader._read_file_meta_info(file)
    return Crafted(data, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)), file.tell()


async def filed_under(orthanc_url: str, sop_uid: str) -> list[str]:
    """The PatientID (as Orthanc indexed it) of every instance Orthanc holds with this SOP Instance UID; each one's
    patient resource is checked to be the one Orthanc computes from that PatientID."""
    async with httpx.AsyncClient(base_url=orthanc_url) as client:
        found = (await client.post("/tools/lookup", content=sop_uid)).json()
        ids: list[str] = []
        for hit in found:
            if hit["Type"] != "Instance":
                continue
            patient = (await client.get(f"/instances/{hit['ID']}/patient")).json()
            patient_id = patient["MainDicomTags"].get("PatientID", "")
            assert patient["ID"] == orthanc_id(patient_id)
            ids.append(patient_id)
        return ids


async def stow_direct(dicomweb_url: str, *files: bytes) -> int:
    """STOW-RS straight into Orthanc, around the gateway (how data of any shape gets into a PACS)."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in files) + f"--{boundary}--\r\n".encode()
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{dicomweb_url}/studies", content=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    return response.status_code


def upload_files(*files: Crafted) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f.filename, f.data, "application/dicom")) for f in files]
