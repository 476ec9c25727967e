"""Upload a few sample exams to a DICOMweb server with one STOW-RS request.

Usage: load_samples.py DICOMWEB_BASE_URL [--user USER:PASSWORD]
       e.g. load_samples.py http://127.0.0.1:18042/dicom-web

The samples are made only from the test files bundled with pydicom (nothing is
downloaded). Uploading twice is fine: the server reports duplicates as success.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file

# Real images with pixel data, each with a distinct SOPInstanceUID, that Orthanc
# (with the GDCM plugin) can render. Several transfer syntaxes on purpose.
SAMPLE_FILES: tuple[str, ...] = (
    "CT_small.dcm",  # CT 128x128 16-bit, explicit VR little endian
    "MR_small.dcm",  # MR 64x64 16-bit, explicit VR little endian
    "JPEG2000.dcm",  # NM/SC 1024x256, JPEG 2000
    "JPGExtended.dcm",  # same NM series, JPEG extended (12-bit)
    "examples_rgb_color.dcm",  # US 320x240 RGB
    "SC_rgb_rle_2frame.dcm",  # SC 100x100 RGB, RLE, 2 frames
)

REFERENCED_SOP_INSTANCE_UID = "00081155"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    patient_id: str
    study_uid: str
    sop_uid: str
    modality: str


def load_sample(name: str) -> Sample:
    path = get_testdata_file(name, download=False)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom test file {name!r} is not bundled with this pydicom")
    data = Path(path).read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Sample(
        name=name,
        data=data,
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.StudyInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        modality=str(ds.get("Modality", "")),
    )


def build_multipart(parts: list[bytes]) -> tuple[str, bytes]:
    """Return (boundary, body) of a multipart/related body of application/dicom parts."""
    while True:
        boundary = f"dicom-gateway-{secrets.token_hex(16)}"
        marker = boundary.encode("ascii")
        if not any(marker in part for part in parts):
            break
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(b"--" + marker + b"\r\n")
        chunks.append(b"Content-Type: application/dicom\r\n")
        chunks.append(f"Content-Length: {len(part)}\r\n\r\n".encode("ascii"))
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(b"--" + marker + b"--\r\n")
    return boundary, b"".join(chunks)


def _first_value(item: dict[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if isinstance(values, list) and values:
        return str(values[0])
    return None


def _sequence_items(response: Any, tag: str) -> list[dict[str, Any]]:
    if not isinstance(response, dict):
        return []
    element = response.get(tag)
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    if not isinstance(values, list):
        return []
    return [item for item in values if isinstance(item, dict)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Upload pydicom's bundled sample images via STOW-RS.")
    parser.add_argument("base_url", metavar="DICOMWEB_BASE_URL", help="e.g. http://127.0.0.1:18042/dicom-web")
    parser.add_argument("--user", metavar="USER:PASSWORD", help="HTTP basic credentials")
    parser.add_argument("--timeout", type=float, default=60.0, help="request timeout in seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base_url: str = args.base_url.rstrip("/")
    auth: tuple[str, str] | None = None
    if args.user:
        user, sep, password = str(args.user).partition(":")
        if not sep:
            print("error: --user must be USER:PASSWORD", file=sys.stderr)
            return 2
        auth = (user, password)

    samples = [load_sample(name) for name in SAMPLE_FILES]
    boundary, body = build_multipart([s.data for s in samples])
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    url = f"{base_url}/studies"
    try:
        response = httpx.post(url, content=body, headers=headers, auth=auth, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"error: STOW-RS to {url} failed: {exc}", file=sys.stderr)
        return 1

    try:
        payload: Any = response.json()
    except ValueError:
        payload = None

    by_sop = {s.sop_uid: s for s in samples}
    stored = _sequence_items(payload, REFERENCED_SOP_SEQUENCE)
    failed = _sequence_items(payload, FAILED_SOP_SEQUENCE)

    print(f"STOW-RS {url}: HTTP {response.status_code}, {len(body)} bytes, {len(samples)} instances sent")
    for item in stored:
        sop_uid = _first_value(item, REFERENCED_SOP_INSTANCE_UID) or "?"
        sample = by_sop.get(sop_uid)
        if sample is None:
            print(f"  stored   {sop_uid} (not one of ours?)")
            continue
        print(
            f"  stored   {sample.name:<24} {sample.modality:<3} PatientID={sample.patient_id:<8} "
            f"StudyInstanceUID={sample.study_uid}"
        )
    for item in failed:
        sop_uid = _first_value(item, REFERENCED_SOP_INSTANCE_UID) or "?"
        reason = _first_value(item, FAILURE_REASON) or "?"
        name = by_sop[sop_uid].name if sop_uid in by_sop else sop_uid
        print(f"  FAILED   {name} (reason {reason})")

    if response.status_code != 200 or failed or len(stored) != len(samples):
        if not stored and not failed:
            print(f"  response: {response.text[:500]}", file=sys.stderr)
        print(
            f"error: HTTP {response.status_code}, {len(stored)}/{len(samples)} instances stored",
            file=sys.stderr,
        )
        return 1
    studies = sorted({s.study_uid for s in samples})
    print(f"OK: {len(stored)} instances in {len(studies)} studies")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
