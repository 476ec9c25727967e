"""Content negotiation for `/dicomweb`: whether a request's `Accept` admits one of the representations offered.

PS3.18 §8.7.3 lists the media types each resource can be returned in; an `Accept` that admits none of the ones the
gateway can deliver is 406 (§8.7.5) before anything goes upstream. RFC 9110 §12.5.1 rules: `*/*` and `type/*`
ranges, parameters on a range narrow it (`multipart/related; type="application/dicom"`), `q=0` excludes.
Parameters other than `type` (`transfer-syntax`, `charset`) are left to the PACS to honour or refuse.

The header is read with string operations in one pass (no regular expression that could backtrack on a crafted
value), and one longer than `MAX_ACCEPT_BYTES` is refused before it is read at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_ACCEPT_BYTES = 2048  # a viewer's Accept is well under 200 bytes; browsers send about 150
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class AcceptTooLong(ValueError):
    """The header is longer than `MAX_ACCEPT_BYTES`."""


@dataclass(frozen=True, slots=True)
class MediaType:
    """A representation the gateway can send: `multipart/related` with its `type`, or a plain media type."""

    type: str
    subtype: str
    part_type: str | None = None  # the `type` parameter of multipart/related

    def __str__(self) -> str:
        base = f"{self.type}/{self.subtype}"
        return f'{base}; type="{self.part_type}"' if self.part_type else base


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One range of an Accept header, lower-cased, with its parameters."""

    type: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def quality(self) -> float:
        try:
            quality = float(self.params.get("q", "1"))
        except ValueError:
            return 0.0
        return quality if 0.0 <= quality <= 1.0 else 0.0  # also NaN

    def admits(self, media: MediaType) -> bool:
        if not _matches(f"{self.type}/{self.subtype}", f"{media.type}/{media.subtype}"):
            return False
        part = self.params.get("type")
        return part is None or media.part_type is None or _matches(part, media.part_type)


def _split(text: str, separator: str) -> list[str]:
    """`text` cut at `separator` outside double quotes."""
    items: list[str] = []
    start, quoted = 0, False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            items.append(text[start:index])
            start = index + 1
    items.append(text[start:])
    return items


def _is_token(text: str) -> bool:
    return bool(text) and all(char in _TOKEN for char in text)


def parse_range(text: str) -> MediaRange | None:
    """One range (`type/subtype *(; name=value)`), or None when it is malformed."""
    media, *parameters = _split(text, ";")
    kind, slash, sub = media.strip().lower().partition("/")
    if not slash or not _is_token(kind) or not _is_token(sub):
        return None
    params: dict[str, str] = {}
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        name = name.strip().lower()
        if not equals or not _is_token(name):
            return None
        params[name] = value.strip().strip('"').lower()
    return MediaRange(kind, sub, params)


def ranges(accept: str) -> list[MediaRange]:
    """The header's well-formed ranges, in order (a malformed one is skipped: it admits nothing)."""
    if len(accept) > MAX_ACCEPT_BYTES:
        raise AcceptTooLong(f"the Accept header is longer than {MAX_ACCEPT_BYTES} characters")
    return [parsed for item in _split(accept, ",") if item.strip() and (parsed := parse_range(item)) is not None]


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
    return any(item.quality > 0 and item.admits(media) for item in ranges(accept) for media in offered)
