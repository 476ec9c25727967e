"""Reading a JSON request body at the edge: the media type, a size cap (also for chunked bodies), the parse."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


async def read_json(request: Request, *, max_bytes: int, what: str) -> Any:
    """The request's JSON value: 415 unless `application/json`, 413 past `max_bytes`, 400 when it does not parse.

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
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON", {"fields": []}) from None
