"""Validation of simple JSON values against their DICOM Value Representation (PS3.5 §6.2, Table 6.2-1).

Each function takes a field name and a value and returns the value as it will be stored, or raises `VrError`
with a message meant for the caller. Values are single-valued: a backslash (the value separator) is refused.
"""

from __future__ import annotations

import re
from datetime import datetime

from gateway.dicom.uid import is_valid_uid


class VrError(ValueError):
    """A value that its VR does not allow."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CS = re.compile(r"[A-Z0-9_ ]*")
_TM = re.compile(r"(\d{2})(\d{2})(\d{2})(\.\d{1,6})?")


def _text(value: str, max_length: int, *, allow_control: bool = False) -> str:
    value = value.strip(" ")
    if len(value) > max_length:
        raise VrError(f"at most {max_length} characters")
    if "\\" in value:
        raise VrError("a single value: no backslash")
    if not allow_control and _CONTROL.search(value):
        raise VrError("control characters are not allowed")
    return value


def ae(value: str) -> str:
    """Application Entity: 1-16 characters of the default repertoire, not only spaces."""
    value = _text(value, 16)
    if not value:
        raise VrError("must not be empty")
    if not value.isascii():
        raise VrError("ASCII characters only")
    return value


def cs(value: str, max_length: int = 16) -> str:
    value = _text(value, max_length)
    if not _CS.fullmatch(value):
        raise VrError("upper-case letters, digits, space and underscore only")
    return value


def sh(value: str) -> str:
    return _text(value, 16)


def lo(value: str) -> str:
    return _text(value, 64)


def pn(value: str) -> str:
    """Person Name as `Family^Given^Middle^Prefix^Suffix`: at most five components, each group at most 64 chars."""
    value = _text(value, 64 * 3 + 2)
    groups = value.split("=")
    if len(groups) > 3:
        raise VrError("at most three component groups (alphabetic=ideographic=phonetic)")
    for group in groups:
        if len(group) > 64:
            raise VrError("at most 64 characters per component group")
        if group.count("^") > 4:
            raise VrError("at most five components: Family^Given^Middle^Prefix^Suffix")
    return value


def da(value: str) -> str:
    if len(value) != 8 or not value.isdigit():
        raise VrError("a date YYYYMMDD")
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise VrError(f"{value} is not a calendar date") from None
    return value


def tm(value: str) -> str:
    match = _TM.fullmatch(value)
    if match is None:
        raise VrError("a time HHMMSS or HHMMSS.FFFFFF")
    hours, minutes, seconds = (int(match.group(i)) for i in (1, 2, 3))
    if hours > 23 or minutes > 59 or seconds > 60:  # PS3.5 Table 6.2-1: 60 for a leap second
        raise VrError(f"{value} is not a time of day")
    return value


def ui(value: str) -> str:
    if not is_valid_uid(value):
        raise VrError("a UID: 1-64 digits and dots, no leading zeros in a component")
    return value


def us(value: int, allowed: frozenset[int] | None = None) -> int:
    if not 0 <= value <= 0xFFFF:
        raise VrError("an unsigned 16-bit integer")
    if allowed is not None and value not in allowed:
        raise VrError(f"one of {', '.join(str(v) for v in sorted(allowed))}")
    return value
