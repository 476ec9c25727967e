"""The stream pieces on their own: multipart/related unwrapping and the PatientID probe, at every chunk split."""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pydicom.data
import pydicom.uid
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dicom.identifiers import IdentifierError
from gateway.dicom.part10 import (
    PARSE_ERRORS,
    PatientIdProbe,
    _read_identifiers,
    _text,
    configure_pydicom,
    dataset_patient_id,
    read_header,
)
from gateway.dicom.part10_fast import WANTED, read_identifiers
from gateway.edge.multipart import MultipartError, SinglePartReader, boundary_of
from gateway.errors import UnprocessableContent
from tests.support.dicom_factory import generated
from tests.support.exams_support import Exams, error, gateway
from tests.support.servers import serve

BOUNDARY = "abc123"


@pytest.fixture(autouse=True)
def _pydicom_as_the_gateway_configures_it() -> None:
    configure_pydicom()


def multipart(body: bytes, *, length: bool, preamble: bytes = b"") -> bytes:
    headers = "Content-Type: application/dicom\r\n" + (f"Content-Length: {len(body)}\r\n" if length else "")
    return (preamble + f"--{BOUNDARY}\r\n{headers}MIME-Version: 1.0\r\n\r\n".encode() + body
            + f"\r\n--{BOUNDARY}--\r\n".encode())


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def unwrap(data: bytes, size: int) -> bytes:
    reader = SinglePartReader(chunks_of(data, size), BOUNDARY)
    await reader.open()
    return b"".join([chunk async for chunk in reader.body()])


@pytest.mark.parametrize("length", [True, False])
@pytest.mark.parametrize("size", [1, 2, 7, 13, 64, 4096, 1 << 20])
async def test_single_part_is_unwrapped_at_any_chunking(length: bool, size: int) -> None:
    # A body that contains the boundary text without the CRLF before it, and CRLFs of its own.
    body = b"\r\n--abc12\r\n" + bytes(range(256)) * 20 + b"--abc123 not a delimiter" + b"\r\n"
    assert await unwrap(multipart(body, length=length, preamble=b"preamble text\r\n"), size) == body


async def test_part_shorter_than_its_content_length_is_an_error() -> None:
    data = multipart(b"x" * 100, length=True)
    truncated = data[: data.index(b"x") + 50]
    with pytest.raises(MultipartError, match="short"):
        await unwrap(truncated, 16)


async def test_part_without_closing_delimiter_is_an_error() -> None:
    data = multipart(b"x" * 100, length=False)
    with pytest.raises(MultipartError, match="closing"):
        await unwrap(data[:-12], 16)


def test_boundary_is_read_from_the_content_type() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary=xyz') == "xyz"
    assert boundary_of('multipart/related; boundary="q-1"; type="application/dicom"') == "q-1"
    with pytest.raises(MultipartError):
        boundary_of("application/dicom")


@pytest.mark.parametrize("size", [1, 100, 700, 4096])
def test_patient_id_probe_finds_the_id_from_a_prefix(size: int) -> None:
    data = generated("PROBE-PATIENT", rows=256, columns=256).data
    probe = PatientIdProbe()
    consumed = 0
    while not probe.done:
        probe.feed(data[consumed:consumed + size])
        consumed += size
    assert probe.patient_id == "PROBE-PATIENT"
    assert consumed <= 4096  # decided from the header: the 128 KiB of pixels are never needed


def test_patient_id_probe_on_a_file_without_patient_id() -> None:
    data = generated("X", omit=("PatientID",)).data
    probe = PatientIdProbe()
    probe.feed(data, final=True)
    assert probe.done
    assert probe.patient_id == ""


def test_patient_id_probe_gives_up_on_garbage() -> None:
    probe = PatientIdProbe(limit=1000)
    with pytest.raises(ValueError, match="header"):
        probe.feed(b"\x00" * 2000)


async def test_a_file_of_another_patient_behind_a_matching_qido_answer_is_refused() -> None:
    """An upstream whose search says the instance is P's but whose WADO hands out Q's file (UID collision)."""
    theirs = generated("PATIENT-Q")
    listed = [{"00100020": {"vr": "LO", "Value": ["PATIENT-P"]},
               "00080018": {"vr": "UI", "Value": [theirs.sop_uid]}}]

    async def qido(request: Request) -> Response:
        return Response(json.dumps(listed), media_type="application/dicom+json")

    async def wado(request: Request) -> Response:
        return Response(multipart(theirs.data, length=True),
                        media_type=f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')

    path = f"/dicom-web/studies/{theirs.study_uid}/series/{theirs.series_uid}/instances"
    upstream = Starlette(routes=[Route(path, qido), Route(f"{path}/{theirs.sop_uid}", wado)])
    with serve(upstream) as server:
        async with gateway(f"{server.url}/dicom-web", pacs_profile="standard") as client:
            response = await Exams(client).file(theirs, patient_id="PATIENT-P")
    error(response, 404, "not_found")
    assert b"PATIENT-Q" not in response.content


def test_damaged_headers_only_ever_raise_422() -> None:
    """Random damage to a valid file's first KiB: pydicom's failures all become the gateway's 422."""
    rng = random.Random(20261122)
    original = generated("FUZZ", rows=16, columns=16).data
    outcomes = {"ok": 0, "422": 0}
    for _ in range(1500):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(128, 1024)] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(132, len(data))]
        try:
            read_header(io.BytesIO(bytes(data)), "fuzz.dcm")
            outcomes["ok"] += 1
        except UnprocessableContent:
            outcomes["422"] += 1
        probe = PatientIdProbe(limit=len(data))
        with contextlib.suppress(ValueError):
            probe.feed(bytes(data), final=True)
    assert outcomes["422"] > 100  # the damage did hit the parser


# What a reader made of a file: its identifiers, "refused: <reason>" for a PatientID without one reading, or None
# (unreadable; for the fast reader: pydicom's turn).
Outcome = dict[str, str] | str | None


def _fast_identifiers(data: bytes) -> Outcome:
    try:
        fast = read_identifiers(data, complete=True)
    except IdentifierError as exc:
        return f"refused: {exc}"
    return None if fast is None else {k: v for k, v in fast.items() if v}


def _pydicom_identifiers(data: bytes) -> Outcome:
    try:
        dataset = _read_identifiers(io.BytesIO(data), complete=True)  # the pydicom path of read_header
        assert dataset is not None
        values = {name: _text(dataset.get(name)) for name in WANTED.values() if name != "PatientID"}
        values["PatientID"] = dataset_patient_id(dataset)
        return {name: value for name, value in values.items() if value}
    except IdentifierError as exc:
        return f"refused: {exc}"
    except (*PARSE_ERRORS,):
        return None


def _all_bundled_files() -> list[Path]:
    return sorted(Path(pydicom.data.__file__).parent.joinpath("test_files").glob("**/*.dcm"))


def test_fast_identifier_reader_agrees_with_pydicom_on_every_bundled_file() -> None:
    used = 0
    for path in _all_bundled_files():
        data = path.read_bytes()
        fast = _fast_identifiers(data)
        if fast is None:
            continue  # pydicom's turn: nothing to compare
        used += 1
        assert fast == _pydicom_identifiers(data), path.name
    assert used > 50  # the fast path covers the ordinary files


def test_fast_identifier_reader_skips_undefined_length_sequences() -> None:
    ds = pydicom.dcmread(io.BytesIO(generated("SEQ-PATIENT").data))
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = "1.2.3"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    nested = pydicom.Dataset()
    nested.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = [nested]
    ds.ReferencedImageSequence = [item, item]  # (0008,1140): before the identifiers of group 0020
    for implicit in (False, True):
        out = io.BytesIO()
        if implicit:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        data = out.getvalue()
        # Rewrite the sequence lengths as undefined, as many modalities write them.
        undefined = _with_undefined_lengths(ds, implicit)
        for payload in (data, undefined):
            fast = _fast_identifiers(payload)
            assert isinstance(fast, dict)
            assert fast == _pydicom_identifiers(payload)
            assert fast["PatientID"] == "SEQ-PATIENT"


def _with_undefined_lengths(ds: pydicom.Dataset, implicit: bool) -> bytes:
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True, implicit_vr=implicit)
    return out.getvalue()


def test_fast_identifier_reader_declines_rather_than_guesses() -> None:
    data = generated("P").data
    assert read_identifiers(data[:300], complete=False) is None  # a prefix that ends early
    assert read_identifiers(b"x" * 200, complete=True) is None
    rng = random.Random(7)
    for _ in range(2000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            damaged[rng.randrange(128, 700)] = rng.randrange(256)
        fast = _fast_identifiers(bytes(damaged))
        if isinstance(fast, dict) and len(fast) == len(WANTED):
            assert fast == _pydicom_identifiers(bytes(damaged))
        elif isinstance(fast, str):  # the PatientID's bytes were hit: the same bytes, the same refusal
            assert _pydicom_identifiers(bytes(damaged)) in (fast, None)
