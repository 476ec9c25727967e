"""Search parameters of `/exams`, parsed and validated at the edge into a typed `SearchQuery`.

Matching rules (PS3.4 §C.2.2.2, PS3.18 §8.3.4): `*` and `?` are wildcards, `\\` separates values, and QIDO-RS (and
Orthanc) read `,` as a list. None of them may reach the upstream in a value that decides *whose* data is returned,
so patient IDs and accession numbers are matched exactly: values holding them are refused, not escaped (DICOM has
no escape for wildcards). Every upstream answer is filtered to exact PatientID equality as well (see `exams`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from pydicom.datadict import tag_for_keyword
from starlette.datastructures import QueryParams

from gateway.dicom import vr
from gateway.dicom.identifiers import MATCHING_CHARACTERS as MATCHING_CHARACTERS  # re-exported for the routes
from gateway.dicom.identifiers import IdentifierError, exact_identifier
from gateway.dicom.uid import is_valid_uid
from gateway.errors import BadRequest

PATIENT_ID_SPELLINGS = ("PatientId", "patientId", "patientID", "PatientID")
_LO_MAX = 64  # PS3.5 Table 6.2-1: Long String
_SH_MAX = 16  # Short String
_CS_RE = re.compile(r"[A-Z0-9_ ]{1,16}")  # Code String
_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
DEFAULT_LIMIT = 100
MAX_LIMIT = 200
MAX_OFFSET = 1_000_000
MAX_INCLUDEFIELDS = 64


class Level(Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


_STUDY_FILTERS = ("StudyDate", "ModalitiesInStudy", "AccessionNumber", "StudyInstanceUID")
FILTERS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: _STUDY_FILTERS,
    Level.SERIES: (*_STUDY_FILTERS, "Modality", "SeriesInstanceUID"),
    Level.INSTANCE: (*_STUDY_FILTERS, "Modality", "SOPInstanceUID"),
}
_PAGING = ("includefield", "limit", "offset")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    patient_id: str
    filters: tuple[tuple[str, str], ...] = ()
    includefields: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def bad_parameter(name: str, message: str) -> BadRequest:
    return BadRequest(f"{name}: {message}", {"parameter": name})


def single(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise bad_parameter(name, "given more than once")
    return values[0] if values else None


def parse_patient_id(params: QueryParams) -> str:
    """The mandatory PatientId, under any of its documented spellings (all given ones must agree)."""
    patient_id = optional_patient_id(params, "PatientId")
    if patient_id is None:
        raise BadRequest("PatientId is required", {"parameter": "PatientId"})
    return patient_id


def optional_patient_id(params: QueryParams, name: str) -> str | None:
    """The PatientId under any of its spellings when given (all must agree); errors name it `name`."""
    given = {value for spelling in PATIENT_ID_SPELLINGS for value in params.getlist(spelling)}
    if not given:
        return None
    if len(given) > 1:
        raise bad_parameter(name, "given more than once with different values")
    return validate_patient_id(given.pop(), name)


def validate_patient_id(value: str, name: str = "PatientID") -> str:
    """A Patient ID (LO) to match exactly, by the rule its stored bytes follow (`gateway.dicom.identifiers`)."""
    return _exact_text(name, value, _LO_MAX)


def _exact_text(name: str, value: str, max_length: int) -> str:
    try:
        return exact_identifier(value, max_length)
    except IdentifierError as exc:
        raise bad_parameter(name, str(exc)) from None


def parse_search(params: QueryParams, level: Level) -> SearchQuery:
    allowed = {*PATIENT_ID_SPELLINGS, *FILTERS[level], *_PAGING}
    unknown = sorted(set(params.keys()) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0]}",
            {"parameter": unknown[0], "allowed": [*sorted(allowed - set(PATIENT_ID_SPELLINGS)), "PatientId"]},
        )
    filters: list[tuple[str, str]] = []
    for name in FILTERS[level]:
        value = single(params, name)
        if value is not None:
            filters.append((name, _VALIDATORS[name](name, value)))
    return SearchQuery(
        patient_id=parse_patient_id(params),
        filters=tuple(filters),
        includefields=parse_includefields(params.getlist("includefield")),
        limit=integer_parameter(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=integer_parameter(params, "offset", 0, 0, MAX_OFFSET),
    )


def parse_includefields(values: Iterable[str]) -> tuple[str, ...]:
    """`includefield` repeated or comma-separated (PS3.18 §8.3.4.3): keywords, 8-hex-digit tags, or `all`."""
    fields: list[str] = []
    for value in values:
        for field in value.split(","):
            field = field.strip()
            if field != "all" and _TAG_RE.fullmatch(field) is None and tag_for_keyword(field) is None:
                raise bad_parameter("includefield", f"{field!r} is not a DICOM keyword or tag")
            if field not in fields:
                fields.append(field)
    if len(fields) > MAX_INCLUDEFIELDS:
        raise bad_parameter("includefield", f"at most {MAX_INCLUDEFIELDS} attributes")
    return tuple(fields)


def integer_parameter(params: QueryParams, name: str, default: int, low: int, high: int) -> int:
    raw = single(params, name)
    if raw is None:
        return default
    if not is_small_integer(raw) or not low <= int(raw) <= high:
        raise bad_parameter(name, f"an integer from {low} to {high}")
    return int(raw)


def instant_parameter(params: QueryParams, name: str) -> float | None:
    """An ISO 8601 date or date-time as POSIX seconds (UTC when it names no offset), when given."""
    raw = single(params, name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_parameter(name, "an ISO 8601 date or date-time, e.g. 2026-11-22T10:00:00Z") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


_SMALL_INTEGER = re.compile(r"[0-9]{1,9}")


def is_small_integer(raw: str) -> bool:
    """ASCII digits only, and few (`str.isdigit` accepts '²'; `int()` refuses 5,000 digits)."""
    return _SMALL_INTEGER.fullmatch(raw) is not None


def date_or_range(name: str, value: str) -> str:
    """StudyDate: a date (YYYYMMDD) or a range `A-B`, `A-`, `-B` of real dates (`gateway.dicom.vr.da_or_range`)."""
    try:
        return vr.da_or_range(value)
    except vr.VrError as exc:
        raise bad_parameter(name, str(exc)) from None


def _code_strings(name: str, value: str) -> str:
    codes = value.split(",")
    if not all(_CS_RE.fullmatch(code) for code in codes):
        raise bad_parameter(name, "one or more codes (A-Z, 0-9, _; at most 16 characters) separated by commas")
    return value


def exact_short_string(name: str, value: str) -> str:
    """An AccessionNumber (SH) to match exactly, by the same rule as a Patient ID."""
    return _exact_text(name, value, _SH_MAX)


def _uids(name: str, value: str) -> str:
    uids = value.split(",")
    if not all(is_valid_uid(uid) for uid in uids):
        raise bad_parameter(name, "one or more valid UIDs (digits and dots, at most 64 characters), comma-separated")
    return value


_VALIDATORS = {
    "StudyDate": date_or_range,
    "ModalitiesInStudy": _code_strings,
    "Modality": _code_strings,
    "AccessionNumber": exact_short_string,
    "StudyInstanceUID": _uids,
    "SeriesInstanceUID": _uids,
    "SOPInstanceUID": _uids,
}


def validate_path_uid(name: str, value: str) -> str:
    """UIDs in a path are checked before anything goes upstream."""
    if not is_valid_uid(value):
        raise BadRequest(f"{name} is not a valid UID", {"parameter": name})
    return value
