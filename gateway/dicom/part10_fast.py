"""A fast path for the five identifiers of an uploaded file, for the encodings nearly every file uses.

pydicom parses a small file's header in ~160 µs; uploads of many small instances spend most of the gateway's time
there. This reader walks the bytes of a Part 10 file (PS3.10 §7.1) in little endian, explicit or implicit VR
(PS3.5 §7.1.2, §7.1.3), skipping sequences of defined or undefined length (PS3.5 §7.5), until the last identifier
it needs, and returns their values: the UIDs as text, the PatientID as `gateway.dicom.identifiers` reads its raw bytes
(raising `IdentifierError` when they have no one reading), the same function the pydicom path applies to the same
bytes. Anything else (big endian, deflate, odd structure) returns None and the caller parses with pydicom, so the
fast path can only be faster, never different: a test compares both on every bundled file and on damaged ones.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.datadict import dictionary_VR

from gateway.dicom.identifiers import patient_id_from_bytes

_MAGIC_AT = 128
IMPLICIT_LE = "1.2.840.10008.1.2"
_UNSUPPORTED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated
# PS3.5 Table 7.1-1: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_KNOWN_VRS = _LONG_VRS | frozenset(  # PS3.5 Table 6.2-1
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
     b"ST", b"TM", b"UI", b"UL", b"US"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
WANTED = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00100020: "PatientID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}
_LAST = max(WANTED)
_PATIENT_ID = 0x00100020
# The UIDs must carry their own VR (else pydicom decides); the PatientID's VR is judged by `gateway.dicom.identifiers`.
_EXPECTED_VR = {tag: b"UI" for tag in WANTED if tag != _PATIENT_ID} | {0x00020010: b"UI", 0x00080005: b"CS"}
_CHARACTER_SET = 0x00080005
DEFLATED = "1.2.840.10008.1.2.1.99"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_U16_BE, _U32_BE, _TAG_BE = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">HH")


class _Unsupported(Exception):
    """Not for the fast path: let pydicom decide."""


def read_identifiers(data: bytes | memoryview, *, complete: bool) -> dict[str, str] | None:
    """The identifiers (absent ones missing from the dict), or None when pydicom must parse this file.

    `data` is the file or, when `complete` is false, its first bytes. `IdentifierError` when the PatientID's bytes
    have no one reading (the pydicom path refuses the same bytes for the same reason).
    """
    try:
        return _read(data, complete)
    except (_Unsupported, struct.error, UnicodeDecodeError, RecursionError):
        return None


def _read(data: bytes | memoryview, complete: bool) -> dict[str, str] | None:
    if data[_MAGIC_AT : _MAGIC_AT + 4] != b"DICM":
        raise _Unsupported
    pos, syntax = _file_meta(data, _MAGIC_AT + 4)
    if syntax in _UNSUPPORTED:
        raise _Unsupported
    walker = _Walker(data, explicit=syntax != IMPLICIT_LE)
    found: dict[str, str] = {}
    charset: bytes | None = None
    patient_id: tuple[bytes, str | None] | None = None
    while True:
        if pos + 8 > len(data):
            if not complete:
                raise _Unsupported  # the prefix ended before the identifiers: pydicom reads the whole file
            break
        tag, length, header = walker.element(pos)
        if tag > _LAST:
            break
        value_at = pos + header
        if length == _UNDEFINED:
            pos = walker.skip_undefined(value_at)
            continue
        if tag in WANTED or tag == _CHARACTER_SET:
            raw = bytes(data[value_at : value_at + length])
            if len(raw) != length:
                raise _Unsupported
            if tag == _CHARACTER_SET:
                charset = raw
            elif tag == _PATIENT_ID:
                patient_id = raw, walker.vr(pos)
            else:
                found[WANTED[tag]] = raw.decode("ascii").strip("\x00").strip()  # as pydicom reads a UID
        pos = value_at + length
    if patient_id is not None:
        found["PatientID"] = patient_id_from_bytes(patient_id[0], patient_id[1], charset)
    return found


def transfer_syntax(data: bytes | memoryview) -> str | None:
    """The Transfer Syntax UID a Part 10 file declares, when its file meta information can be walked."""
    if bytes(data[_MAGIC_AT : _MAGIC_AT + 4]) != b"DICM":
        return None
    try:
        return _file_meta(data, _MAGIC_AT + 4)[1]
    except (_Unsupported, struct.error, UnicodeDecodeError):
        return None


class _MetaError(_Unsupported):
    """File meta information that parsers may read differently: never stored."""


def _file_meta(data: Any, pos: int) -> tuple[int, str]:
    """Walk group 0002 (always explicit VR little endian); return where the dataset starts and its syntax.

    Parsers disagree on repeated meta elements (pydicom keeps the last Transfer Syntax UID, DCMTK the first), and on
    where the dataset starts when (0002,0000) says another length than the elements add up to; a file crafted so
    would be one file to the gateway and another to the PACS (found in review). Both are refused.
    """
    syntax = None
    walker = _Walker(data, explicit=True)
    start, previous, group_end = pos, -1, None
    while pos + 8 <= len(data) and _U16.unpack_from(data, pos)[0] == 0x0002:
        tag, length, header = walker.element(pos)
        if length == _UNDEFINED:
            raise _Unsupported
        if tag <= previous:
            raise _MetaError(f"file meta element (0002,{tag & 0xFFFF:04X}) is repeated or out of order")
        previous = tag
        if tag == 0x00020000:
            if length != 4:
                raise _MetaError("the file meta group length is not 4 bytes long")
            group_end = pos + header + length + _U32.unpack_from(data, pos + header)[0]
        if tag == 0x00020010:
            syntax = bytes(data[pos + header : pos + header + length]).decode("ascii").strip(" \x00")
        pos += header + length
    if group_end is not None and group_end != pos:
        raise _MetaError("the file meta group length does not match its elements")
    if syntax is None or pos == start:
        raise _Unsupported
    return pos, syntax


class _Walker:
    def __init__(self, data: Any, *, explicit: bool) -> None:
        self.data = data
        self.explicit = explicit

    def element(self, pos: int) -> tuple[int, int, int]:
        """(tag, value length, header length) of the element at `pos`; an identifier must carry its own VR."""
        group, number = _TAG.unpack_from(self.data, pos)
        tag = group << 16 | number
        if group == 0xFFFE:  # item and delimiters have no VR in either encoding
            return tag, _U32.unpack_from(self.data, pos + 4)[0], 8
        if not self.explicit:
            return tag, _U32.unpack_from(self.data, pos + 4)[0], 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr not in _KNOWN_VRS or (tag in _EXPECTED_VR and vr != _EXPECTED_VR[tag]):
            raise _Unsupported
        if vr in _LONG_VRS:
            return tag, _U32.unpack_from(self.data, pos + 8)[0], 12
        return tag, _U16.unpack_from(self.data, pos + 6)[0], 8

    def vr(self, pos: int) -> str | None:
        """The VR the element at `pos` carries (None in implicit VR)."""
        return bytes(self.data[pos + 4 : pos + 6]).decode("ascii") if self.explicit else None

    def skip_undefined(self, pos: int, *, item: bool = False) -> int:
        """Skip the items of an undefined-length sequence starting at `pos` (with `item`: the elements of an
        undefined-length item, whose undefined-length elements are sequences); return what follows its delimiter."""
        end = _ITEM_END if item else _SEQUENCE_END
        while True:
            tag, length, header = self.element(pos)
            pos += header
            if tag == end:
                return pos
            if not item and tag != _ITEM:
                raise _Unsupported  # e.g. encapsulated pixel data fragments: not before group 0020 in sane files
            pos = self.skip_undefined(pos, item=not item) if length == _UNDEFINED else pos + length
            if item and pos > len(self.data):
                raise _Unsupported


# --- structure --------------------------------------------------------------------------------------------------------

_DELIMITS = frozenset({(_ITEM_END, "item"), (_SEQUENCE_END, "seq"), (_SEQUENCE_END, "pixels")})
MAX_NESTING = 16  # sequences within sequences; real IODs stay under ~6, Orthanc 1.10 crashes at ~50 (measured)
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_PIXEL_DATA = 0x7FE00010


class StructureError(ValueError):
    """A file whose structure the gateway will not pass to the PACS; the message says why."""


def check_structure(data: bytes | memoryview | Any) -> None:
    """Walk every element of a Part 10 file without recursion; raise `StructureError` when it is unsafe to store.

    Refused: top-level elements out of ascending order or repeated (PS3.5 §7.1: parsers disagree on which copy
    counts, so a file could say one PatientID to the gateway and another to the PACS), nesting deeper than
    `MAX_NESTING`, structure that does not add up, and deflated files (whose structure cannot be walked in place).
    `data` is bytes or a buffer (an mmap of a large spooled file): values are skipped, never read.
    """
    try:
        _check(data)
    except (struct.error, IndexError, UnicodeDecodeError, _Unsupported) as exc:
        raise StructureError(f"the file's structure does not add up ({type(exc).__name__})") from None


def _dataset_start(data: Any) -> tuple[int, bool, bool]:
    """Where the dataset starts after the file meta group, whether its VRs are explicit, whether it is big endian."""
    if bytes(data[_MAGIC_AT : _MAGIC_AT + 4]) != b"DICM":
        raise StructureError("no DICM prefix")
    try:
        pos, syntax = _file_meta(data, _MAGIC_AT + 4)
    except _MetaError as exc:
        raise StructureError(str(exc)) from None
    if syntax == DEFLATED:
        raise StructureError("deflated files are not accepted")
    big = syntax == _EXPLICIT_BE
    explicit = syntax != IMPLICIT_LE
    if explicit and not big and pos + 6 <= len(data) and bytes(data[pos + 4 : pos + 6]) not in _KNOWN_VRS:
        explicit = False  # an implicit dataset under an explicit syntax: pydicom and DCMTK read it so too
    return pos, explicit, big


def _check(data: Any) -> None:
    # Over 60 lines on purpose: this one loop visits every element of every uploaded file, the hot path of
    # `make bench` (docs/benchmarks.md). Its branches stay inline because a function call per element costs more
    # than the checks themselves; what runs once per file is in `_dataset_start`.
    pos, explicit, big = _dataset_start(data)
    u16, u32, tag_struct = (_U16_BE, _U32_BE, _TAG_BE) if big else (_U16, _U32, _TAG)
    end = len(data)
    # Open containers: (kind, end offset or None when delimited, explicit VR inside). kind: "seq", "item", "pixels".
    stack: list[tuple[str, int | None, bool]] = []
    previous_top = -1
    while True:
        while stack and stack[-1][1] is not None and pos >= stack[-1][1]:
            if pos > stack[-1][1]:
                raise StructureError("an element runs past the end of its container")
            stack.pop()
        if pos == end:
            if stack:
                raise StructureError("the file ends inside a sequence")
            return
        if pos + 8 > end:
            raise StructureError("the file ends inside an element header")
        inside_explicit = stack[-1][2] if stack else explicit
        group, number = tag_struct.unpack_from(data, pos)
        tag = group << 16 | number
        if group == 0xFFFE:  # items and delimiters: always a 4-byte length, no VR (PS3.5 §7.5)
            length = u32.unpack_from(data, pos + 4)[0]
            pos += 8
            kind = stack[-1][0] if stack else ""
            if tag == _ITEM and kind == "pixels":
                pos += length  # a fragment of encapsulated pixel data
            elif tag == _ITEM and kind == "seq":
                stack.append(("item", None if length == _UNDEFINED else pos + length, inside_explicit))
            elif (tag, kind) in _DELIMITS and stack[-1][1] is None:
                stack.pop()
            else:
                raise StructureError("an item or delimiter out of place")
            continue
        if not stack:
            if tag <= previous_top:
                raise StructureError(f"element ({group:04X},{number:04X}) is repeated or out of order")
            previous_top = tag
        contents_explicit = inside_explicit
        if inside_explicit:
            vr = bytes(data[pos + 4 : pos + 6])
            if vr not in _KNOWN_VRS:
                raise StructureError("an unknown value representation")
            if vr in _LONG_VRS:
                length, header = u32.unpack_from(data, pos + 8)[0], 12
            else:
                length, header = u16.unpack_from(data, pos + 6)[0], 8
            is_sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
            if vr == b"UN":
                contents_explicit = False  # PS3.5 §6.2.2: a sequence sent as UN is implicit VR inside
        else:
            length, header = u32.unpack_from(data, pos + 4)[0], 8
            is_sequence = length == _UNDEFINED or _dictionary_vr(tag) == "SQ"
        pos += header
        if tag == _PIXEL_DATA and length == _UNDEFINED:
            stack.append(("pixels", None, inside_explicit))
        elif is_sequence:
            if sum(1 for kind, _, _ in stack if kind == "seq") >= MAX_NESTING:
                raise StructureError(f"sequences nested deeper than {MAX_NESTING}")
            stack.append(("seq", None if length == _UNDEFINED else pos + length, contents_explicit))
        elif length == _UNDEFINED:
            raise StructureError("an undefined length on an element that is not a sequence")
        else:
            pos += length
            if pos > end:
                raise StructureError("an element runs past the end of the file")


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""
