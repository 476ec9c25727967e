"""Validation of simple JSON values against their DICOM Value Representation (PS3.5 §6.2, Table 6.2-1).

Each function takes a field name and a value and returns the value as it will be stored, or raises `VrError`
with a message meant for the caller. Values are single-valued: a backslash (the value separator) is refused.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from gateway.dicom.uid import is_valid_uid


class VrError(ValueError):
    """A value that its VR does not allow."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CS = re.compile(r"[A-Z0-9_ ]*")


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


# -- DA, TM, DT -------------------------------------------------------------------------------------------------
# Every date and time check of the gateway is here (issue 12). The endpoints take different spellings, each a
# function named for its rule; the messages are the ones the endpoints' error bodies carry (openapi.yaml):
#   da              DA `YYYYMMDD`, a calendar date (PS3.5 Table 6.2-1)              the VR itself
#   da_or_range     DA, or a range `A-B`, `A-`, `-B` of DA, as given (PS3.4 §C.2.2.2.5) /exams searches' StudyDate
#   optional_da     DA, or None or `""` (unknown)                                   callback StudyDate, PatientBirthDate
#   loose_da        `YYYYMMDD` or `YYYY-MM-DD`, as DA                               workitem dates
#   loose_da_range  a range of loose_da dates, as DA bounds                         GET /workitems start date
#   day_range_dt    DA bounds as the DT range of those whole days                   GET /workitems start date, upstream
#   tm              TM `HHMMSS[.F]`, second 60 for a leap second                    the VR itself
#   loose_tm        `HHMM[SS[.F]]` or `HH:MM[:SS[.F]]`, seconds 00-59, as TM         workitem start time
#   optional_tm_shape  `HH[MM[SS[.F]]]` by shape only, or None or `""`            callback StudyTime

_TM = re.compile(r"(\d{2})(\d{2})(\d{2})(\.\d{1,6})?", re.ASCII)  # re.ASCII: \d is 0-9, not any Unicode digit
_LOOSE_DA = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})", re.ASCII)
_LOOSE_TM = re.compile(r"(\d{2})(:?)(\d{2})(?:\2(\d{2})(\.\d{1,6})?)?", re.ASCII)
_TM_SHAPE = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", re.ASCII)


def _is_calendar_date(value: str) -> bool:
    """Whether eight digits `YYYYMMDD` name a day of the calendar (strptime takes ASCII digits only)."""
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def da(value: str) -> str:
    if len(value) != 8 or not (value.isascii() and value.isdigit()):
        raise VrError("a date YYYYMMDD")
    if not _is_calendar_date(value):
        raise VrError(f"{value} is not a calendar date")
    return value


def da_or_range(value: str) -> str:
    """A date (YYYYMMDD) or a range `A-B`, `A-`, `-B` of real dates (PS3.4 §C.2.2.2.5), returned as given."""
    start, dash, end = value.partition("-")
    parts = [p for p in (start, end) if p]
    if not parts or (dash and value == "-"):
        raise VrError("a date YYYYMMDD or a range A-B, A- or -B")
    for part in parts:
        if len(part) != 8 or not (part.isascii() and part.isdigit()) or not _is_calendar_date(part):
            raise VrError(f"{part!r} is not a date YYYYMMDD")
    if start and end and start > end:
        raise VrError("the range ends before it starts")
    return value


def optional_da(value: str | None) -> str | None:
    """DA as a PACS reports it in a callback: None or `""` is a date not known (PS3.5 §6.2: an empty value)."""
    if value is None or value == "":
        return value
    if not (len(value) == 8 and value.isascii() and value.isdigit()):
        raise VrError("a date YYYYMMDD")
    if not _is_calendar_date(value):
        raise VrError("not a real date")
    return value


def loose_da(value: str) -> str:
    """A date as `YYYYMMDD` or `YYYY-MM-DD` (not a mix), as DA `YYYYMMDD`."""
    match = _LOOSE_DA.fullmatch(value)
    if match is None or value.count("-") not in (0, 2):
        raise VrError("a date YYYYMMDD or YYYY-MM-DD")
    year, month, day = (int(part) for part in match.groups())
    try:
        date(year, month, day)
    except ValueError:
        raise VrError(f"{value} is not a calendar date") from None
    return "".join(match.groups())


def loose_da_range(value: str) -> tuple[str, str]:
    """A date or a range `A-B`, `A-`, `-B` of `loose_da` dates, as DA bounds (`""` for an open end)."""
    if _LOOSE_DA.fullmatch(value):
        day = loose_da(value)
        return day, day
    # The dash between the bounds is the one that leaves a date on each side (YYYY-MM-DD has dashes of its own).
    for index, char in enumerate(value):
        if char != "-":
            continue
        low, high = value[:index], value[index + 1:]
        if (not low or _LOOSE_DA.fullmatch(low)) and (not high or _LOOSE_DA.fullmatch(high)) and (low or high):
            low, high = (loose_da(low) if low else ""), (loose_da(high) if high else "")
            if low and high and low > high:
                raise VrError("the range ends before it starts")
            return low, high
    raise VrError("a date YYYYMMDD or YYYY-MM-DD, or a range A-B, A- or -B of such dates")


def day_range_dt(low: str, high: str) -> str:
    """DA bounds (`""` for an open end) as a DT range covering whole days (PS3.4 §C.2.2.2.5.1)."""
    return f"{low + '000000' if low else ''}-{high + '235959' if high else ''}"


def tm(value: str) -> str:
    match = _TM.fullmatch(value)
    if match is None:
        raise VrError("a time HHMMSS or HHMMSS.FFFFFF")
    hours, minutes, seconds = (int(match.group(i)) for i in (1, 2, 3))
    if hours > 23 or minutes > 59 or seconds > 60:  # PS3.5 Table 6.2-1: 60 for a leap second
        raise VrError(f"{value} is not a time of day")
    return value


def loose_tm(value: str) -> str:
    """A time of day as HHMM[SS[.F]] or HH:MM[:SS[.F]], as TM `HHMMSS[.F]`. Seconds run 00-59: the workitem's start
    time goes to the PACS inside a DT, which dcm4che (java.time) and .NET's DateTime cannot hold with second 60."""
    match = _LOOSE_TM.fullmatch(value)
    if match is None:
        raise VrError("a time HHMMSS, HHMM, HH:MM:SS or HH:MM, with at most 6 digits of fractional seconds")
    hours, _, minutes, seconds, fraction = match.groups()
    seconds = seconds or "00"
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
        raise VrError(f"{value} is not a time of day (00:00:00 to 23:59:59)")
    return f"{hours}{minutes}{seconds}{fraction or ''}"


def optional_tm_shape(value: str | None) -> str | None:
    """TM's shape `HH[MM[SS[.F]]]` (PS3.5 Table 6.2-1), ranges not checked: a callback's StudyTime is kept as the
    PACS sent it. None or `""` is a time not known."""
    if value and not _TM_SHAPE.fullmatch(value):
        raise VrError("a time HHMMSS[.FFFFFF]")
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
