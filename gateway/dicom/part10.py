"""DICOM Part 10 files at the gateway's edge: what it reads of them, and only that (PS3.10 §7).

- `read_header`: an uploaded file's identifying attributes, parsed by pydicom up to (never into) the pixel data. Its
  PatientID is the one reading of the element's raw bytes (`gateway.dicom.identifiers`), or the file is refused (422).
  Deflated files are refused before anything is inflated (a few KB can inflate to GBs).
- `PatientIdProbe`: the PatientID of a file arriving as a stream, from as few leading bytes as possible; a deflated
  one is inflated incrementally, never past a fixed bound.

The 128-byte preamble is never passed on as sent: PS3.10 §7.5 lets it hold anything, which is how a file can also be a
valid executable or archive (the "preamble attack", CVE-2019-11687). The gateway stores zeros in its place.
"""

from __future__ import annotations

import io
import mmap
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble

from gateway.dicom.identifiers import IdentifierError, patient_id_from_bytes
from gateway.dicom.part10_fast import DEFLATED, StructureError, check_structure, read_identifiers, transfer_syntax
from gateway.dicom.uid import is_valid_uid
from gateway.errors import UnprocessableContent

PREAMBLE_LENGTH = 128
ZERO_PREAMBLE = bytes(PREAMBLE_LENGTH)
PATIENT_ID_TAG = 0x00100020
# What pydicom may raise on a damaged header; anything else is a bug and must surface as one.
PARSE_ERRORS = (InvalidDicomError, BytesLengthException, EOFError, ValueError, TypeError, KeyError, IndexError,
                OverflowError, struct.error, NotImplementedError, AttributeError, UnicodeDecodeError, LookupError,
                RecursionError, zlib.error)
CHARACTER_SET_TAG = 0x00080005


def configure_pydicom() -> None:
    """Parse what arrives without pydicom's warnings: invalid values are the gateway's to judge, not to log.

    Process-wide by nature (pydicom's settings and the warnings filter are); idempotent.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str


REQUIRED = (
    ("StudyInstanceUID", True),
    ("SeriesInstanceUID", True),
    ("SOPInstanceUID", True),
    ("SOPClassUID", True),
    ("PatientID", False),
)


def read_header(file: BinaryIO, filename: str, *, in_memory: bool = True, check: bool = True) -> InstanceHeader:
    """Parse the header of an uploaded Part 10 file; 422 naming the file and attribute when it cannot be stored.

    The attributes needed all sit before (0020,000F), so parsing stops there. It runs on an in-memory copy of the
    file's first 64 KiB, which holds them in any ordinary file, with `part10_fast` where it applies and pydicom
    otherwise, and on the whole file only when they lie further in. Blocking I/O on a file spooled to disk: call
    it from a worker thread then.
    """
    file.seek(0)
    prefix = file.read(_HEADER_PREFIX)

    def whole() -> BinaryIO:
        file.seek(0)
        return file

    header = _header(prefix, len(prefix) < _HEADER_PREFIX, whole, filename)
    if check:
        check_file_structure(file, filename, in_memory=in_memory)
    return header


def read_header_data(data: bytes | memoryview, filename: str) -> InstanceHeader:
    """`read_header` for a file held in memory (a view of the request body); the structure is not checked."""
    prefix = data[:_HEADER_PREFIX]
    return _header(prefix, len(prefix) == len(data), lambda: io.BytesIO(data), filename)


def _header(prefix: bytes | memoryview, complete: bool, whole: Callable[[], BinaryIO], filename: str) -> InstanceHeader:
    if transfer_syntax(prefix) == DEFLATED:
        raise _deflated(filename)
    try:
        fast = read_identifiers(prefix, complete=complete)
        if fast is not None:
            values = {keyword: fast.get(keyword, "") for keyword, _ in REQUIRED}
        else:
            if _pydicom_reads_deflated(io.BytesIO(prefix)) or (not complete and _pydicom_reads_deflated(whole())):
                raise _deflated(filename)
            dataset = _read_identifiers(io.BytesIO(prefix), complete=complete)
            if dataset is None:  # the identifiers lie past the prefix
                dataset = _read_identifiers(whole(), complete=True)
            assert dataset is not None
            values = {keyword: _text(dataset.get(keyword)) for keyword, _ in REQUIRED if keyword != "PatientID"}
            values["PatientID"] = dataset_patient_id(dataset)
    except IdentifierError as exc:
        raise UnprocessableContent(
            f"{filename}: PatientID cannot be matched exactly", {"file": filename, "attribute": "PatientID",
                                                                 "reason": str(exc)},
        ) from None
    except PARSE_ERRORS as exc:
        raise UnprocessableContent(
            f"{filename} is not a DICOM Part 10 file",
            {"file": filename, "reason": _reason(exc)},
        ) from None
    for keyword, is_uid in REQUIRED:
        value = values[keyword]
        if not value:
            raise UnprocessableContent(
                f"{filename} lacks {keyword}", {"file": filename, "attribute": keyword, "reason": "missing"}
            )
        if is_uid and not is_valid_uid(value):
            raise UnprocessableContent(
                f"{filename}: {keyword} is not a valid UID",
                {"file": filename, "attribute": keyword, "reason": "1-64 digits and dots, no leading zeros"},
            )
    return InstanceHeader(
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        patient_id=values["PatientID"],
    )


def dataset_patient_id(dataset: pydicom.Dataset) -> str:
    """The PatientID of a dataset pydicom read (its elements still raw), by the rule `part10_fast` applies too."""
    element = dataset.get_item(PATIENT_ID_TAG)
    if element is None:
        return ""
    if not isinstance(element, RawDataElement):  # pydicom converts only empty elements while it reads
        if element.is_empty:
            return ""
        raise IdentifierError("an element pydicom has already converted")
    vr = None if element.is_implicit_VR else element.VR
    if element.value is None and element.length:  # deferred: longer than `_read_identifiers`'s 4 KiB
        raise IdentifierError("at most 64 characters")
    return patient_id_from_bytes(element.value or b"", vr, _raw_character_set(dataset))


def _raw_character_set(dataset: pydicom.Dataset) -> bytes | None:
    element = dataset.get_item(CHARACTER_SET_TAG)
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes) or value is None:
        return value
    terms = list(value) if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
    return "\\".join(str(term) for term in terms).encode("latin-1", errors="replace")


def _pydicom_reads_deflated(file: BinaryIO) -> bool:
    """Whether pydicom's `read_partial` would inflate this file (it inflates all of it, in memory, at once)."""
    try:
        read_preamble(file, False)
        return bool(_read_file_meta_info(file).get("TransferSyntaxUID") == DEFLATED)
    except PARSE_ERRORS:
        return False  # the parse that follows fails the same way, and says why


def _deflated(filename: str) -> UnprocessableContent:
    return UnprocessableContent(f"{filename} cannot be stored: deflated files are not accepted",
                                {"file": filename, "reason": "deflated files are not accepted",
                                 "transfer_syntax": DEFLATED})


def check_file_structure(file: BinaryIO, filename: str, *, in_memory: bool) -> None:
    """The whole file's structure (`part10_fast.check_structure`), walked in memory or through an mmap."""
    file.seek(0)
    if in_memory:
        check_data_structure(file.read(), filename)
        return
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        check_data_structure(mapped, filename)


def check_data_structure(data: bytes | memoryview | mmap.mmap, filename: str) -> None:
    """`check_file_structure` for a file's bytes; 422 naming the file and the reason."""
    try:
        check_structure(data)
    except StructureError as exc:
        raise UnprocessableContent(
            f"{filename} cannot be stored: {exc}", {"file": filename, "reason": str(exc)}
        ) from None


_HEADER_PREFIX = 64 * 1024
_LAST_IDENTIFIER_TAG = 0x0020000E  # SeriesInstanceUID: the highest tag `REQUIRED` names


def _read_identifiers(file: BinaryIO, *, complete: bool) -> pydicom.Dataset | None:
    """The dataset up to the identifiers; None when `file` is a prefix that ends before they are all read."""
    passed = False

    def stop_when(tag: int, vr: str | None, length: int) -> bool:
        nonlocal passed
        passed = tag > _LAST_IDENTIFIER_TAG
        return passed

    dataset = read_partial(file, stop_when=stop_when, defer_size=4096, force=False)
    return dataset if passed or complete else None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)  # a multi-valued ID: refused below by the `\` check or UID check
    return str(value).strip(" \x00")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InvalidDicomError):
        return "no DICM prefix after the 128-byte preamble, or no file meta information"
    return f"unreadable header ({type(exc).__name__})"


class PatientIdProbe:
    """Finds the PatientID in the first bytes of a Part 10 stream.

    Feed chunks until `done`; then `patient_id` is the value ("" when the file has none). The dataset is parsed
    only until the first element past (0010,0020), so a few KiB suffice for any ordinary file. A deflated dataset
    (PS3.5 §A.5) is inflated as it arrives, never to more than `inflated_limit` bytes: pydicom would inflate all of
    it at once, and a few KB can inflate to GBs (each parse of the inflated prefix costs CPU in proportion to it,
    ~0.35 s for 1 MiB of junk). `ValueError` when the header cannot be read within those bounds.
    """

    def __init__(self, limit: int = 4 * 1024 * 1024, inflated_limit: int = 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._inflated_limit = inflated_limit
        self._syntax: str | None = None
        self._dataset_at = 0
        self._inflater: zlib._Decompress | None = None
        self._inflated = bytearray()
        self._fed_to_inflater = 0
        self.done = False
        self.patient_id = ""

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        self._buffer += chunk
        passed = False

        def stop_when(tag: int, vr: str | None, length: int) -> bool:
            nonlocal passed
            passed = tag > PATIENT_ID_TAG
            return passed

        try:
            if self._syntax is None:
                self._read_meta()
            if self._syntax == DEFLATED:
                ended = self._inflate()
                if final and not ended and len(self._inflated) < self._inflated_limit:
                    raise ValueError("the stored file's deflate stream is cut short")
                dataset = read_dataset(io.BytesIO(bytes(self._inflated)), False, True, stop_when=stop_when,
                                       defer_size=None)
                final = final or ended
            else:
                dataset = read_partial(io.BytesIO(bytes(self._buffer)), stop_when=stop_when, defer_size=None)
            patient_id = _text(dataset.get("PatientID")) if passed or final else ""
        except PARSE_ERRORS:
            if final or self._exhausted():
                raise ValueError("the stored file's header cannot be read") from None
            return
        if passed or final:
            self.done = True
            self.patient_id = patient_id
        elif self._exhausted():
            raise ValueError(f"no PatientID in the first {self._limit} bytes of the stored file "
                             f"(or {self._inflated_limit} inflated)")

    def _exhausted(self) -> bool:
        return len(self._buffer) >= self._limit or len(self._inflated) >= self._inflated_limit

    def _read_meta(self) -> None:
        """The transfer syntax, once the file meta information is in (an incomplete one raises a parse error)."""
        file = io.BytesIO(bytes(self._buffer))
        read_preamble(file, False)
        meta = _read_file_meta_info(file)
        if len(self._buffer) - file.tell() < 8:
            raise EOFError  # the meta may go on in the next chunk: decide once the next element's header is in
        self._syntax = str(meta.get("TransferSyntaxUID", ""))
        self._dataset_at = file.tell()
        if self._syntax == DEFLATED:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self._fed_to_inflater = self._dataset_at

    def _inflate(self) -> bool:
        """Inflate what arrived since the last call, up to `inflated_limit` bytes in all; True once the stream ended."""
        assert self._inflater is not None
        room = self._inflated_limit - len(self._inflated)
        if room > 0:
            data = self._inflater.unconsumed_tail + bytes(self._buffer[self._fed_to_inflater :])
            self._fed_to_inflater = len(self._buffer)
            self._inflated += self._inflater.decompress(data, room)
        return self._inflater.eof
