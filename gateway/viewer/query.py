"""The query string of a `/dicomweb` search (QIDO-RS, PS3.18 §8.3.4), checked before anything goes upstream.

Only what QIDO-RS defines is passed on: attribute matches named by keyword or tag (PS3.18 §8.3.4.1), `includefield`,
`fuzzymatching`, `limit` and `offset`; anything else is 400 naming the parameter, as are values the PACS would
choke on (a `limit` that is not a number, thousands of parameters, megabyte values). Values are checked by the
attribute's VR: UIDs are lists of valid UIDs (no wildcards: PS3.4 §C.2.2.2.4 does not apply them to UI), dates and
times are values or ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.datastructures import QueryParams

from gateway.dicom.uid import is_valid_uid
from gateway.edge.params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    bad_parameter,
    date_or_range,
    integer_parameter,
    parse_includefields,
    single,
)

MAX_VIEWPORT = 2048  # pixels on a side of a rendered image, as /exams thumbnails
MAX_SOURCE = 65535  # a region of the source image lies within its Rows and Columns (US)
MAX_PARAMETERS = 64  # attribute matches, includefields and paging together
MAX_VALUE_LENGTH = 1024  # a list of 15 UIDs fits
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_TIME = r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
_TIME_RANGE = re.compile(rf"{_TIME}|{_TIME}-|-{_TIME}|{_TIME}-{_TIME}")
_DATETIME = r"[0-9]{4}(?:[0-9]{2}){0,5}(?:\.[0-9]{1,6})?(?:[+-][0-9]{4})?"
_DATETIME_RANGE = re.compile(rf"{_DATETIME}|{_DATETIME}-|-{_DATETIME}|{_DATETIME}-{_DATETIME}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INTEGER = re.compile(r"-?[0-9]{1,6}")
_DECIMAL = re.compile(r"-?[0-9]{1,7}(\.[0-9]{1,6})?")
# PS3.4 §C.2.2.2.4: wildcard matching applies to these VRs only; elsewhere `*` and `?` are refused by the PACS
# (Orthanc answers 400 for `Rows=*` or `PatientAge=*`).
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_WINDOW_FUNCTIONS = frozenset({"linear", "linear-exact", "sigmoid"})
_CONTROL_PARAMETERS = ("includefield", "fuzzymatching", "limit", "offset")


@dataclass(frozen=True, slots=True)
class QidoQuery:
    """A checked search: attribute matches by keyword (the PACS is asked by keyword), and the paging."""

    matches: tuple[tuple[str, str], ...]
    includefields: tuple[str, ...]
    fuzzymatching: str | None
    limit: int | None
    offset: int | None

    def match(self, keyword: str) -> str | None:
        return next((value for name, value in self.matches if name == keyword), None)

    def params(self, *, without: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """The query as parameters for the PACS, leaving out the matches named in `without`."""
        out = [(name, value) for name, value in self.matches if name not in without]
        out += [("includefield", field) for field in self.includefields]
        if self.fuzzymatching is not None:
            out.append(("fuzzymatching", self.fuzzymatching))
        if self.limit is not None:
            out.append(("limit", str(self.limit)))
        if self.offset is not None:
            out.append(("offset", str(self.offset)))
        return out


def parse_qido(params: QueryParams, *, ignore: tuple[str, ...] = ("token",)) -> QidoQuery:
    """The search in `params` (minus `ignore`, e.g. the viewer's `token`), or 400 naming the first bad parameter."""
    items = [(name, value) for name, value in params.multi_items() if name not in ignore]
    if len(items) > MAX_PARAMETERS:
        raise bad_parameter("query", f"at most {MAX_PARAMETERS} parameters")
    matches: dict[str, str] = {}
    for name, value in items:
        if len(value) > MAX_VALUE_LENGTH:
            raise bad_parameter(name, f"at most {MAX_VALUE_LENGTH} characters")
        if name in _CONTROL_PARAMETERS:
            continue
        keyword = _keyword(name)
        if keyword in matches:
            raise bad_parameter(name, "given more than once")
        matches[keyword] = _checked_value(name, keyword, value)
    fuzzy = single(params, "fuzzymatching")
    if fuzzy is not None and fuzzy not in ("true", "false"):
        raise bad_parameter("fuzzymatching", "true or false")
    return QidoQuery(
        matches=tuple(matches.items()),
        includefields=parse_includefields(params.getlist("includefield")),
        fuzzymatching=fuzzy,
        limit=integer_parameter(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) if "limit" in params else None,
        offset=integer_parameter(params, "offset", 0, 0, MAX_OFFSET) if "offset" in params else None,
    )


def uid_list(name: str, value: str) -> list[str]:
    """A UID match: one UID or a comma-separated list (PS3.18 §8.3.4.1, UID list matching)."""
    uids = value.split(",")
    if not all(is_valid_uid(uid) for uid in uids):
        raise bad_parameter(name, "one or more valid UIDs (digits and dots, at most 64 characters), comma-separated")
    return uids


def _keyword(name: str) -> str:
    """The attribute a parameter names, as its keyword: `PatientID` and `00100020` are the same match."""
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return str(keyword)
    elif tag_for_keyword(name) is not None:
        return name
    raise bad_parameter(name, "not a QIDO-RS parameter or a DICOM attribute")


def _checked_value(name: str, keyword: str, value: str) -> str:
    if _CONTROL.search(value):
        raise bad_parameter(name, "control characters are not allowed")
    vr = str(dictionary_VR(keyword))
    if vr == "UI":
        uid_list(name, value)
    elif vr == "DA":
        date_or_range(name, value)
    elif vr == "TM" and not _TIME_RANGE.fullmatch(value):
        raise bad_parameter(name, "a time HHMMSS (or a prefix of it) or a range of them")
    elif vr == "DT" and not _DATETIME_RANGE.fullmatch(value):
        raise bad_parameter(name, "a date-time YYYYMMDDHHMMSS (or a prefix of it) or a range of them")
    elif vr == "SQ":
        raise bad_parameter(name, "sequence matching is not supported")
    elif vr not in _WILDCARD_VRS and ("*" in value or "?" in value):
        raise bad_parameter(name, f"wildcards do not apply to {vr} values")
    return value


def rendering_params(params: QueryParams) -> list[tuple[str, str]]:
    """`viewport`, `quality` and `window` of a rendered resource (PS3.18 §8.3.5.1), checked and bounded.

    Orthanc 1.10 builds whatever it is asked for: a 20000x20000 viewport costs it ~400 MB, 66000x66000 overflows
    and kills the process, a zero size drops the connection (measured). So sizes are 1 to `MAX_VIEWPORT` pixels.
    """
    out: list[tuple[str, str]] = []
    viewport = single(params, "viewport")
    if viewport is not None:
        numbers = viewport.split(",")
        if (len(numbers) not in (2, 6) or not all(_INTEGER.fullmatch(n) for n in numbers)
                or not all(1 <= int(n) <= MAX_VIEWPORT for n in numbers[:2])
                or not all(0 <= int(n) <= MAX_SOURCE for n in numbers[2:4])
                or not all(0 < abs(int(n)) <= MAX_SOURCE for n in numbers[4:])):
            raise bad_parameter("viewport", f"vw,vh or vw,vh,sx,sy,sw,sh: sizes 1-{MAX_VIEWPORT}, a region within "
                                            "the image")
        out.append(("viewport", viewport))
    quality = single(params, "quality")
    if quality is not None:
        if not _INTEGER.fullmatch(quality) or not 1 <= int(quality) <= 100:
            raise bad_parameter("quality", "an integer from 1 to 100")
        out.append(("quality", quality))
    window = single(params, "window")
    if window is not None:
        terms = window.split(",")
        # PS3.18 §8.3.5.1.4: `window=center,width,function`, all three.
        if (len(terms) != 3 or not all(_DECIMAL.fullmatch(t) for t in terms[:2]) or float(terms[1]) <= 0
                or terms[2] not in _WINDOW_FUNCTIONS):
            raise bad_parameter("window", "center,width,function: width above 0, function linear, linear-exact "
                                          "or sigmoid")
        out.append(("window", window))
    return out
