"""Request bodies at the edge: the one intake guard every body passes, and the JSON bodies read through it.

The guard (`accept_media_type`, then `capped`: a declared Content-Length past the cap is 413 before anything is
read, and the receive is cut off with 413 as soon as the bytes passed the cap, also for a chunked body) serves the
JSON bodies here, the multipart/form-data uploads (`gateway.edge.formdata.read_form`) and the multipart/related
intake (`gateway.edge.related`).

`read_json` takes `application/json` only (the workitems); `read_json_object` takes the media types its caller
lists and keeps the bytes as received (the new-exam callback, which PACSs send under whatever type their vendor
wrote).

What either accepts, the gateway can store and serve back: JSON texts that Python's `json` reads but that are
not interoperable JSON (RFC 8259 §6: numbers beyond IEEE 754 doubles; §8.2: strings with lone surrogates) are
refused, as are `NaN` and `Infinity` (not JSON at all), strings with NUL (which PostgreSQL cannot store in a text
column) and nesting deeper than `MAX_JSON_DEPTH`. Each refusal is a 400 naming where in the body it is.

`read_json_object` also hands the bytes on, so it refuses what receivers of the same bytes could read otherwise
(a name repeated within an object, also in another case) and caps the count of values, which bounds what the
parsed object costs in memory (a Python object per value, tens of bytes each, for as little as two bytes of text).
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# Deep enough for any body the gateway reads (a callback event or a workitem is flat; DICOM JSON nests three levels
# per sequence), shallow enough that nothing downstream (pydantic, the JSON encoder, the database) recurses far.
MAX_JSON_DEPTH = 32
_JSON = frozenset({"application/json"})


async def read_json(request: Request, *, max_bytes: int, what: str) -> Any:
    """The request's JSON value: 415 unless `application/json`, 413 past `max_bytes`, 400 when it does not parse or
    holds a value the gateway could not store and serve back.

    `what` names the thing sent, for the messages ("the event", "the workitem").
    """
    accept_media_type(request, _JSON, f"{request.method} {request.url.path} takes application/json")
    body = await read_body(request, max_bytes=max_bytes, what=what)
    try:
        value = json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON", {"fields": []}) from None
    _check(value)
    return value


async def read_json_object(request: Request, *, max_bytes: int, max_values: int, what: str,
                           media_types: frozenset[str]) -> tuple[bytes, dict[str, Any]]:
    """The request's body as received and the JSON object it holds.

    415 unless the media type (parameters aside; `""` when there is no Content-Type) is one of `media_types`,
    413 past `max_bytes`. Whatever the declared type, the bytes are read as JSON text, never form-decoded; a
    `charset` parameter is ignored: JSON text is UTF-8 (RFC 8259 §8.1; §11 defines no charset for
    application/json). A leading byte order mark is ignored for parsing, as §8.1 allows, and kept in the bytes.
    400 when the bytes are not UTF-8, not JSON, not an object, repeat a name within an object (§4: receivers
    disagree on which one counts, and the gateway hands the bytes on; names equal but for case count as one, see
    `_unique_names`), hold more than `max_values` values (every object, array, string, number, `true`, `false`
    and `null`, the body itself included), or hold a value the gateway could not store and serve back.
    """
    accepted = sorted(media_types - {""})
    kind = accept_media_type(request, media_types, f"{request.method} {request.url.path} takes a JSON object sent "
                             f"as {', '.join(accepted)} or without a Content-Type", listed=True)
    raw = await read_body(request, max_bytes=max_bytes, what=what)
    # curl --data sends the JSON text as is under application/x-www-form-urlencoded: a real form ("a=1&b=2")
    # or URL-encoded JSON is not the object asked for, and the answer says how the body was read.
    how = ("; a form-urlencoded body is read as JSON text, as `curl --data` sends it, and is not decoded"
           if kind == "application/x-www-form-urlencoded" else "")

    def not_an_object(reason: str) -> BadRequest:
        return BadRequest(f"the body must be a JSON object{how}", {"fields": [], "reason": reason})

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_an_object(f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip(" \t\n\r"):
        raise not_an_object("the body is empty")
    try:
        value = json.loads(text, object_pairs_hook=_unique_names)
    except RecursionError:
        raise _too_deep() from None
    except _RepeatedName as exc:
        message = ("appears more than once in its object" if exc.first == exc.name else
                   f"is the name {_echo(exc.first)}, earlier in its object, in another case (decoders that match "
                   "names regardless of case, such as Go's encoding/json, read one for the other)")
        raise _refused((exc.name,), message) from None
    except json.JSONDecodeError as exc:
        raise not_an_object(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer past Python's int_max_str_digits (4300): valid JSON, but not read
        raise _refused((), "holds a number with too many digits to read") from None
    if not isinstance(value, dict):
        raise not_an_object(f"a JSON {_json_kind(value)}")
    _check(value, max_values)
    return raw, value


def media_type(content_type: str) -> str:
    """`type/subtype` of a Content-Type header, lower case, parameters dropped; `""` when there is none."""
    return content_type.split(";")[0].strip().lower()


def accept_media_type(request: Request, accepted: frozenset[str], refusal: str, *, listed: bool = False) -> str:
    """The body's media type (`media_type`); 415 with `refusal` unless it is one of `accepted` (`""` there takes a
    request without a Content-Type). The error names the Content-Type sent, and the accepted types when `listed`."""
    content_type = request.headers.get("content-type", "")
    kind = media_type(content_type)
    if kind not in accepted:
        details: dict[str, object] = {"content_type": content_type}
        if listed:
            details["accepted"] = sorted(accepted - {""})
        raise UnsupportedMediaType(refusal, details)
    return kind


def declared_length(request: Request) -> int | None:
    """The Content-Length, when it is one (ASCII digits: `str.isdigit` alone would take '²')."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def capped(request: Request, *, max_bytes: int, what: str) -> Request:
    """The request with its body capped at `max_bytes`: 413 now when its Content-Length says more, else as soon as
    the bytes received pass it (a chunked body, or one longer than declared). `what` names it in the message."""
    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise too_large(what, max_bytes)
    return Request(request.scope, capped_receive(request.receive, max_bytes=max_bytes, what=what))


def capped_receive(receive: Receive, *, max_bytes: int, what: str) -> Receive:
    """`receive`, refused with 413 as soon as the body's bytes pass `max_bytes`."""
    seen = 0

    async def receive_capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise too_large(what, max_bytes)
        return message

    return receive_capped


def too_large(what: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is larger than the gateway accepts", {"limit_bytes": max_bytes})


async def read_body(request: Request, *, max_bytes: int, what: str) -> bytes:
    """The whole body, through the guard (`capped`)."""
    return await capped(request, max_bytes=max_bytes, what=what).body()


class _RepeatedName(ValueError):
    def __init__(self, name: str, first: str) -> None:
        super().__init__(name)
        self.name = name  # the later one
        self.first = first  # the one it repeats: the same name, or the same in another case


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object, unless two of its names are equal after `str.casefold()`: some decoders match names regardless
    of case, the last one winning (Go's encoding/json folds "PatientID", "patientID" and "PATIENTID" into one
    field), so a subscriber could read another value from the same bytes than the gateway. Full case folding
    (Unicode's C and F mappings) joins at least the names that simple folding joins (Go's: U+212A KELVIN SIGN is
    k), and a few more ("ß" and "ss"), which is refused too: no event needs both."""
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for name, value in pairs:
        folded = name.casefold()
        if folded in seen:
            raise _RepeatedName(name, seen[folded])
        seen[folded] = name
        out[name] = value
    return out


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _too_deep() -> BadRequest:
    return BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels",
                      {"fields": [], "max_depth": MAX_JSON_DEPTH})


def _too_many(max_values: int) -> BadRequest:
    return BadRequest(f"the body holds more than {max_values} JSON values", {"fields": [], "max_values": max_values})


Path = tuple[str | int, ...]


def _check(value: Any, max_values: int | None = None) -> None:
    """400 for the first value the gateway could not store and serve back, named by its path ("a.b.0"), or as
    soon as the values counted pass `max_values`."""
    count = 1
    containers: list[tuple[dict[str, Any] | list[Any], Path]] = []
    if isinstance(value, dict | list):
        containers.append((value, ()))
    elif (problem := _problem(value)) is not None:
        raise _refused((), problem)
    while containers:
        node, path = containers.pop()
        if len(path) >= MAX_JSON_DEPTH:
            raise _too_deep()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            count += 1
            if max_values is not None and count > max_values:
                raise _too_many(max_values)
            if isinstance(key, str) and (problem := _problem(key)) is not None:
                raise _refused((*path, key), problem)
            if isinstance(child, dict | list):
                containers.append((child, (*path, key)))
            elif (problem := _problem(child)) is not None:
                raise _refused((*path, key), problem)


def _problem(value: Any) -> str | None:
    """Why a scalar could not be stored and served back, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return "holds a NUL character"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # `\ud800` escapes, or CESU-8 bytes (json reads them with surrogatepass)
                return "not Unicode text (a lone surrogate)"
    elif isinstance(value, float) and not math.isfinite(value):  # NaN, Infinity, or 1e400 read as infinity
        return "not a finite number"
    return None


def _echo(text: str) -> str:
    # Errors echo the body's keys: escaped, so that the error itself can be served (a key may be the culprit).
    return text.encode("utf-8", "backslashreplace").decode()


def _refused(path: Path, message: str) -> BadRequest:
    field = _echo(".".join(str(part) for part in path)) or "(body)"
    return BadRequest("the body holds a value the gateway cannot store", {"fields": [{"field": field,
                                                                                      "message": message}]})
