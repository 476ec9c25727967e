"""multipart/form-data bodies (RFC 7578), read through the intake guard (`gateway.edge.bodies`), with a fast path
for small ones: split in one pass over bytes already in memory.

python-multipart, behind Starlette's `Request.form()`, parses in Python callbacks per part and spools each file;
for an upload of ten 9 KB instances that is a good part of the gateway's own time. Bodies up to `SMALL_BODY` bytes
are read whole and split here into fields whose values are views of the body (nothing is copied). Anything
unusual returns None and the caller falls back to Starlette's parser, which also produces its errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.requests import Request

from gateway.edge.bodies import accept_media_type, capped, declared_length

SMALL_BODY = 4 * 1024 * 1024
_FORM_DATA = frozenset({"multipart/form-data"})


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    filename: str | None  # None for a text field
    value: memoryview  # a view of the request body


async def read_form(request: Request, *, max_bytes: int, max_files: int, refusal: str, what: str
                    ) -> list[FormField] | FormData:
    """The request's multipart/form-data body: 415 with `refusal` for another media type, 413 past `max_bytes`
    (`bodies.capped`). A body declared at most `SMALL_BODY` long is read whole and split here; a larger, streamed
    or unusual one goes to Starlette's parser (which reuses a body already read): the caller closes its FormData."""
    accept_media_type(request, _FORM_DATA, refusal)
    limited = capped(request, max_bytes=max_bytes, what=what)
    declared = declared_length(request)
    if declared is not None and declared <= SMALL_BODY:
        fields = split_form(await limited.body(), request.headers.get("content-type", ""), max_files)
        if fields is not None:
            return fields
    return await limited.form(max_files=max_files, max_fields=100)


def split_form(body: bytes, content_type: str, max_files: int) -> list[FormField] | None:
    """The body's fields, or None when it is not a plain, well-formed multipart/form-data body."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return None
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):  # no preamble: Starlette's parser refuses one too
        return None
    return _split(body, delimiter, max_files)


def _split(body: bytes, delimiter: bytes, max_files: int) -> list[FormField] | None:
    view = memoryview(body)
    items: list[FormField] = []
    files = 0
    pos = len(delimiter)
    while True:
        if body.startswith(b"--", pos):  # the closing delimiter
            return items or None
        if not body.startswith(b"\r\n", pos):
            return None
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            return None
        headers = _headers(body[pos + 2 : head_end])
        if headers is None:
            return None
        data_start = head_end + 4
        data_end = body.find(b"\r\n" + delimiter, data_start)
        if data_end < 0:
            return None
        item = _field(headers, view[data_start:data_end])
        if item is None:
            return None
        items.append(item)
        files += item.filename is not None
        if files > max_files:
            return None  # Starlette's parser refuses it with its message
        pos = data_end + 2 + len(delimiter)


def _headers(block: bytes) -> dict[bytes, bytes] | None:
    headers: dict[bytes, bytes] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            return None
        headers.setdefault(name.strip().lower(), value.strip())
    return headers


def _field(headers: dict[bytes, bytes], data: memoryview) -> FormField | None:
    disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
    if disposition != b"form-data" or b"name" not in options:
        return None
    try:
        name = options[b"name"].decode()
        filename = options[b"filename"].decode() if b"filename" in options else None
        if filename is None:
            bytes(data).decode()  # a text field must be UTF-8, as Starlette's parser requires
    except UnicodeDecodeError:
        return None
    return FormField(name, filename, data)
