"""A fast path for small multipart/form-data bodies (RFC 7578): split in one pass over bytes already in memory.

python-multipart, behind Starlette's `Request.form()`, parses in Python callbacks per part and spools each file;
for an upload of ten 9 KB instances that is a good part of the gateway's own time. Bodies up to `SMALL_BODY` bytes
are read whole and split here into the same `FormData` of `UploadFile`s (spooled files held in memory). Anything
unusual returns None and the caller falls back to Starlette's parser, which also produces its errors.
"""

from __future__ import annotations

import tempfile

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile

SMALL_BODY = 4 * 1024 * 1024
_SPOOL_IN_MEMORY = 1024 * 1024 + SMALL_BODY  # never rolled to disk: the body is in memory already


def split_form(body: bytes, content_type: str, max_files: int) -> FormData | None:
    """The body's fields, or None when it is not a plain, well-formed multipart/form-data body."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return None
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):  # no preamble: Starlette's parser refuses one too
        return None
    items: list[tuple[str, str | UploadFile]] = []
    form = None
    try:
        form = _split(body, delimiter, max_files, items)
    finally:
        if form is None:  # declined or failed: close the files made so far
            for _, value in items:
                if isinstance(value, UploadFile):
                    value.file.close()
    return form


def _split(
    body: bytes, delimiter: bytes, max_files: int, items: list[tuple[str, str | UploadFile]]
) -> FormData | None:
    pos = len(delimiter)
    while True:
        if body.startswith(b"--", pos):  # the closing delimiter
            return FormData(items) if items else None
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
        item = _field(headers, body[data_start:data_end])
        if item is None:
            return None
        items.append(item)
        if sum(1 for _, value in items if isinstance(value, UploadFile)) > max_files:
            return None  # Starlette's parser refuses it with its message
        pos = data_end + 2 + len(delimiter)


def _headers(block: bytes) -> Headers | None:
    raw: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            return None
        raw.append((name.strip().lower(), value.strip()))
    return Headers(raw=raw)


def _field(headers: Headers, data: bytes) -> tuple[str, str | UploadFile] | None:
    disposition, options = parse_options_header(headers.get("content-disposition", ""))
    if disposition != b"form-data" or b"name" not in options:
        return None
    try:
        name = options[b"name"].decode()
        filename = options[b"filename"].decode() if b"filename" in options else None
        if filename is None:
            return name, data.decode()
    except UnicodeDecodeError:
        return None
    spooled = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - closed with the form
    spooled.write(data)
    spooled.seek(0)
    return name, UploadFile(spooled, size=len(data), filename=filename, headers=headers)  # type: ignore[arg-type]
