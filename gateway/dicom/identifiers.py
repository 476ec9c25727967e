"""Identifiers matched for scope: the one rule for a PatientID (or AccessionNumber) the gateway decides on.

A patient's token may only reach data filed under its PatientID, so the ID the gateway checks must be the ID the PACS
files. Readers disagree on odd bytes (measured with Orthanc 1.10 / DCMTK against pydicom, `docs/threat-model-
patient-id.md`): Orthanc cuts a value at a NUL (`\\0VICTIM` is filed under the empty ID), keeps leading spaces and
the space of an odd-length value, drops ESC bytes and bytes it cannot decode, reads `\\` as `¥` under JIS X 0201;
pydicom strips NULs and spaces at both ends, honours escape sequences and decodes what DCMTK drops. So an identifier
is accepted only when its bytes have one reading:

- one value (no `\\`), none of the matching characters `* ? ,` (PS3.4 §C.2.2.2), at most `max_length` characters;
- only printable characters: no controls (C0 with NUL and ESC, DEL, C1), no format or invisible characters, no
  space other than U+0020, no U+FFFD (a decoder's "unreadable");
- no padding but the one trailing space PS3.5 §6.2 allows to make a value's length even, never a leading space;
- in a file: of VR LO (an explicit-VR file must say LO), an even number of bytes, in the declared character set's
  repertoire (PS3.3 §C.12.1.1.2): ASCII 0x20-0x7E by default; the single-byte sets' assigned characters; valid
  UTF-8 for ISO_IR 192; for code extensions (ISO 2022 ...), multi-byte sets and sets the PACS does not know, plain
  ASCII only (no escape sequence may switch sets); under JIS X 0201 (ISO_IR 13, also as G0 of ISO 2022 IR 13),
  whose 0x5C and 0x7E are `¥` and `‾`, not those two.

`patient_id_from_bytes` applies it to an element's raw bytes (both the fast reader and pydicom's hand them over, so
they cannot disagree); `exact_identifier` to a value already text (a query parameter).
"""

from __future__ import annotations

import re
import unicodedata

MATCHING_CHARACTERS = frozenset("*?\\,")
PATIENT_ID_MAX = 64  # PS3.5 Table 6.2-1: Long String, 64 characters
_ESC = 0x1B
# PS3.3 Table C.12-2: single-byte sets without code extensions, as Python decodes them. Measured against Orthanc 1.10
# byte by byte (0xA0-0xFF): every assigned byte reads the same; unassigned ones Orthanc drops and Python refuses.
# ISO_IR 203 (Latin-9) is left out: Orthanc 1.10 does not know it and drops every byte above 0x7F.
_SINGLE_BYTE = {
    "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5", "ISO_IR 127": "iso8859_6", "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9", "ISO_IR 166": "tis_620",
}
_DEFAULT = frozenset({"", "ISO_IR 6"})
_JIS_X0201 = frozenset({"ISO_IR 13", "ISO 2022 IR 13"})  # G0 is JIS X 0201 Roman: 0x5C is ¥, 0x7E is ‾
_JIS_KATAKANA = range(0xA1, 0xE0)  # ISO_IR 13's G1, half-width katakana (read alike by Orthanc and Python)
_UTF8 = "ISO_IR 192"
# Unicode categories of characters that print: letters, marks, digits, punctuation, symbols, and the ASCII space.
_PRINTABLE = frozenset("LMNPS")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


class IdentifierError(ValueError):
    """An identifier that has more than one reading, or none; the message says why (never the value)."""


def exact_identifier(value: str, max_length: int = PATIENT_ID_MAX) -> str:
    """A value given as text (a query parameter) to match exactly; its one trailing pad space, if any, removed."""
    if value.endswith(" ") and not value.endswith("  "):
        value = value[:-1]
    _check_text(value, max_length)
    return value


def patient_id_from_bytes(raw: bytes, vr: str | None, charset: bytes | None) -> str:
    """The PatientID a file's (0010,0020) bytes mean, when they mean exactly one; `IdentifierError` otherwise.

    `vr`: the element's own VR in an explicit-VR file, None in an implicit one. `charset`: the raw value of
    (0008,0005) (None when absent). "" when the value is empty (the caller decides whether that may be stored).
    """
    if not raw:
        return ""  # absent or empty, whatever its VR: missing
    if vr is not None and vr != "LO":
        raise IdentifierError(f"PatientID is Long String (LO), the file says {_printable_vr(vr)}")
    if len(raw) % 2:
        raise IdentifierError("a value of odd length (PS3.5 §7.1.1: values are padded to an even length)")
    if raw.endswith(b" "):
        raw = raw[:-1]  # the one pad space
    text = _decode(raw, _terms(charset))
    if text:
        _check_text(text, PATIENT_ID_MAX)
    return text


def _check_text(text: str, max_length: int) -> None:
    if not text:
        raise IdentifierError("must not be empty")
    if len(text) > max_length:
        raise IdentifierError(f"at most {max_length} characters")
    if MATCHING_CHARACTERS.intersection(text):
        raise IdentifierError("one value, none of * ? \\ , (wildcards, lists and multiple values)")
    if text[0] == " " or text[-1] == " ":
        raise IdentifierError("no padding but one trailing space (no leading space, no run of trailing spaces)")
    if _PRINTABLE_ASCII.fullmatch(text):
        return  # the usual case, without a category lookup per character (all of U+0020-U+007E is printable)
    for char in text:
        if char != " " and (char == "\ufffd" or unicodedata.category(char)[0] not in _PRINTABLE):
            raise IdentifierError("printable characters only: no control, escape, format or invisible characters "
                                  "and no space other than U+0020")


def _terms(charset: bytes | None) -> tuple[str, ...]:
    """The defined terms of Specific Character Set, as DCMTK reads them (each trimmed of spaces)."""
    if not charset:
        return ("",)
    text = charset.decode("latin-1").rstrip(" \x00")
    return tuple(term.strip(" ") for term in text.split("\\"))


def _decode(raw: bytes, terms: tuple[str, ...]) -> str:
    if _ESC in raw:
        raise IdentifierError("an escape sequence (ESC): readers switch character sets differently")
    first = terms[0]
    if len(terms) == 1 and first in _SINGLE_BYTE:
        try:
            return raw.decode(_SINGLE_BYTE[first])
        except UnicodeDecodeError:
            raise IdentifierError(f"bytes outside the repertoire of {first}") from None
    if len(terms) == 1 and first == _UTF8:
        try:
            return raw.decode("utf-8")  # strict: no overlong forms, no surrogates (DCMTK drops those)
        except UnicodeDecodeError:
            raise IdentifierError("not valid UTF-8 (ISO_IR 192)") from None
    jis = first in _JIS_X0201
    katakana = jis and len(terms) == 1
    for byte in raw:
        if byte >= 0x80 and not (katakana and byte in _JIS_KATAKANA):
            raise IdentifierError(
                "bytes outside the declared repertoire: under this character set only plain ASCII has one reading"
                if first not in _DEFAULT or len(terms) > 1 else "bytes outside the default repertoire (ASCII)")
        if jis and byte in (0x5C, 0x7E):
            raise IdentifierError("0x5C and 0x7E read as ¥ and ‾ under JIS X 0201, as \\ and ~ elsewhere")
    return raw.decode("shift_jis") if katakana else raw.decode("ascii")


def _printable_vr(vr: str) -> str:
    return vr if vr.isascii() and vr.isalpha() else "an unknown VR"
