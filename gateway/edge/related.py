"""A multipart/related request body (PS3.18 §8.6.1, STOW-RS) spooled part by part to temporary files.

Each part goes to its own spooled file (memory up to 1 MiB, then disk), so a large upload never sits in memory;
the total is capped by the intake guard's receive (`gateway.edge.bodies.capped_receive`: 413 as soon as it is
passed) and so is the number of parts. The media type is the caller's to check (STOW-RS takes `multipart/related`
with parameters). Unlike `bodies.capped`, a Content-Length past the cap is not refused before reading (as it
never was here): a body that is malformed or has too many parts in its first bytes is answered 400 whatever its
declared length.
"""

from __future__ import annotations

import tempfile
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser
from starlette.datastructures import UploadFile
from starlette.requests import Request

from gateway.edge.bodies import capped_receive
from gateway.edge.multipart import MultipartError, boundary_of
from gateway.errors import BadRequest

_SPOOL = 1024 * 1024


async def spool_related(request: Request, *, max_bytes: int, max_parts: int) -> list[UploadFile]:
    """The parts of the request's multipart/related body, each as an `UploadFile` (the caller closes them)."""
    try:
        boundary = boundary_of(request.headers.get("content-type", ""))
    except MultipartError:
        raise BadRequest("a multipart/related body needs a boundary", {"header": "Content-Type"}) from None
    files: list[IO[bytes]] = []
    sizes: list[int] = []

    def on_part_begin() -> None:
        if len(files) >= max_parts:
            raise BadRequest(f"more than {max_parts} parts", {"limit_parts": max_parts})
        files.append(tempfile.SpooledTemporaryFile(max_size=_SPOOL))  # noqa: SIM115 - closed by the caller
        sizes.append(0)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        files[-1].write(data[start:end])
        sizes[-1] += end - start

    parser = MultipartParser(boundary.encode("latin-1"), {"on_part_begin": on_part_begin,
                                                          "on_part_data": on_part_data})
    try:
        await _feed(request, parser, max_bytes)
    except BaseException:
        for file in files:
            file.close()
        raise
    uploads = []
    for index, (file, size) in enumerate(zip(files, sizes, strict=True)):
        file.seek(0)
        uploads.append(UploadFile(file, size=size, filename=f"part {index + 1}"))  # type: ignore[arg-type]
    if not uploads:
        raise BadRequest("no part in the multipart/related body", {"header": "Content-Type"})
    return uploads


async def _feed(request: Request, parser: MultipartParser, max_bytes: int) -> None:
    limited = Request(request.scope, capped_receive(request.receive, max_bytes=max_bytes, what="the upload"))
    try:
        async for chunk in limited.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest("the multipart/related body is malformed", {"reason": str(exc)[:200]}) from None
