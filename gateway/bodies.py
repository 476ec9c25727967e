"""Reading a JSON request body at the edge: the media type, a size cap (also for chunked bodies), the parse.

What `read_json` accepts, the gateway can store and serve back: JSON texts that Python's `json` reads but that are
not interoperable JSON (RFC 8259 §6: numbers beyond IEEE 754 doubles; §8.2: strings with lone surrogates) are
refused, as are `NaN` and `Infinity` (not JSON at all), strings with NUL (which PostgreSQL cannot store in a text
column) and nesting deeper than `MAX_JSON_DEPTH`. Each refusal is a 400 naming where in the body it is.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# Deep enough for any body the gateway reads (a callback event or a workitem is flat; DICOM JSON nests three levels
# per sequence), shallow enough that nothing downstream (pydantic, the JSON encoder, the database) recurses far.
MAX_JSON_DEPTH = 32


async def read_json(request: Request, *, max_bytes: int, what: str) -> Any:
    """The request's JSON value: 415 unless `application/json`, 413 past `max_bytes`, 400 when it does not parse or
    holds a value the gateway could not store and serve back.

    `what` names the thing sent, for the messages ("the event", "the workitem").
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"{request.method} {request.url.path} takes application/json",
                                   {"content_type": content_type})
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"{what} is larger than the gateway accepts", {"limit_bytes": max_bytes})
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        value = json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON", {"fields": []}) from None
    _check(value)
    return value


def _too_deep() -> BadRequest:
    return BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels",
                      {"fields": [], "max_depth": MAX_JSON_DEPTH})


Path = tuple[str | int, ...]


def _check(value: Any) -> None:
    """400 for the first value the gateway could not store and serve back, named by its path ("a.b.0")."""
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


def _refused(path: Path, message: str) -> BadRequest:
    # The path echoes the body's keys: escaped, so that the error itself can be served (a key may be the culprit).
    field = ".".join(str(part) for part in path).encode("utf-8", "backslashreplace").decode() or "(body)"
    return BadRequest("the body holds a value the gateway cannot store", {"fields": [{"field": field,
                                                                                      "message": message}]})
