"""Content negotiation for `/dicomweb`: whether a request's `Accept` admits one of the representations offered.

PS3.18 §8.7.3 lists the media types each resource can be returned in; an `Accept` that admits none of the ones the
gateway can deliver is 406 (§8.7.5) before anything goes upstream. RFC 9110 §12.5.1 rules: `*/*` and `type/*`
ranges, parameters on a range narrow it (`multipart/related; type="application/dicom"`), `q=0` excludes.
Parameters other than `type` (`transfer-syntax`, `charset`) are left to the PACS to honour or refuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_RANGE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)/([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*((?:;[^;,"]*(?:"[^"]*")?)*)')
_PARAM = re.compile(r'\s*;\s*([^=;\s]+)\s*=\s*("[^"]*"|[^;\s]*)')


@dataclass(frozen=True, slots=True)
class MediaType:
    """A representation the gateway can send: `multipart/related` with its `type`, or a plain media type."""

    type: str
    subtype: str
    part_type: str | None = None  # the `type` parameter of multipart/related

    @classmethod
    def parse(cls, text: str) -> MediaType:
        match = _RANGE.fullmatch(text)
        if match is None:
            raise ValueError(f"not a media type: {text!r}")
        params = _params(match.group(3))
        return cls(match.group(1).lower(), match.group(2).lower(), params.get("type"))

    def __str__(self) -> str:
        base = f"{self.type}/{self.subtype}"
        return f'{base}; type="{self.part_type}"' if self.part_type else base


def _params(text: str) -> dict[str, str]:
    return {name.lower(): value.strip('"').lower() for name, value in _PARAM.findall(text)}


def _matches(pattern: str, value: str) -> bool:
    """`*/*`, `type/*` or an exact `type/subtype` against a media type (a multipart part's `type` parameter)."""
    kind, _, sub = pattern.partition("/")
    other_kind, _, other_sub = value.partition("/")
    return kind == "*" or (kind == other_kind and sub in ("*", other_sub))


def acceptable(accept: str | None, offered: Iterable[MediaType]) -> bool:
    """Whether `accept` (the header's value, absent or empty meaning anything) admits one of `offered`."""
    if accept is None or not accept.strip():
        return True
    offered = list(offered)
    for item in _split(accept):
        match = _RANGE.fullmatch(item)
        if match is None:
            continue  # a malformed range admits nothing; the others still count
        params = _params(match.group(3))
        if _quality(params.get("q", "1")) <= 0:
            continue
        pattern = f"{match.group(1).lower()}/{match.group(2).lower()}"
        part = params.get("type")
        for media in offered:
            if not _matches(pattern, f"{media.type}/{media.subtype}"):
                continue
            if part is None or media.part_type is None or _matches(part, media.part_type):
                return True
    return False


def _split(accept: str) -> list[str]:
    """The header's comma-separated ranges (a comma inside a quoted parameter value does not split)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in accept:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item.strip()]


def _quality(value: str) -> float:
    try:
        quality = float(value)
    except ValueError:
        return 0.0
    return quality if 0.0 <= quality <= 1.0 else 0.0
