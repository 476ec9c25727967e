"""multipart/related (RFC 2387) as DICOMweb uses it (PS3.18 §8.6.1.2), streamed both ways.

- `related_part_header` / `related_closing`: the framing of a STOW-RS request body, written around bytes that stream
  from elsewhere (the length of the whole body is known in advance, so it goes with a Content-Length).
- `SinglePartReader`: reads a WADO-RS answer that holds one part (one instance) and yields that part's body without
  buffering it: by its Content-Length when the part has one (Orthanc's do), else up to the closing delimiter.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator

_BOUNDARY_RE = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_MAX_PART_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The upstream's multipart answer is not what RFC 2046 and PS3.18 say it must be."""


def new_boundary() -> str:
    return f"dicom-gateway-{secrets.token_hex(16)}"


def related_part_header(boundary: str, content_type: str, length: int | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def related_closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


PART_SEPARATOR = b"\r\n"  # ends each part's body, before the next delimiter


def boundary_of(content_type: str) -> str:
    match = _BOUNDARY_RE.search(content_type)
    if match is None or not content_type.lower().startswith("multipart/"):
        raise MultipartError(f"not a multipart answer: {content_type!r}")
    return match.group(1)


class SinglePartReader:
    """The first part of a multipart body arriving as `chunks`: `await open()` for its headers, then `body()`."""

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str) -> None:
        self._chunks = chunks
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._buffer = b""
        self.headers: dict[str, str] = {}
        self.length: int | None = None

    async def _more(self) -> bool:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return False
        self._buffer += chunk
        return True

    async def open(self) -> dict[str, str]:
        """Skip any preamble, read the first part's headers; the body is what remains."""
        while True:
            start = self._buffer.find(self._delimiter)
            if start >= 0:
                end = self._buffer.find(b"\r\n\r\n", start)
                if end >= 0:
                    break
            if len(self._buffer) > _MAX_PART_HEADER_BYTES:
                raise MultipartError("no part headers in the first 16 KiB")
            if not await self._more():
                raise MultipartError("the multipart answer ended before its first part")
        header_block = self._buffer[start + len(self._delimiter) : end].decode("latin-1")
        for line in header_block.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        self._buffer = self._buffer[end + 4 :]
        length = self.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit() and len(length) <= 15):
                raise MultipartError(f"bad part Content-Length {length!r}")
            self.length = int(length)
        return self.headers

    async def body(self) -> AsyncIterator[bytes]:
        if self.length is not None:
            async for chunk in self._counted(self.length):
                yield chunk
        else:
            async for chunk in self._delimited():
                yield chunk

    async def _counted(self, remaining: int) -> AsyncIterator[bytes]:
        while remaining > 0:
            if not self._buffer and not await self._more():
                raise MultipartError(f"the part ended {remaining} bytes short of its Content-Length")
            chunk, self._buffer = self._buffer[:remaining], self._buffer[remaining:]
            remaining -= len(chunk)
            yield chunk

    async def _delimited(self) -> AsyncIterator[bytes]:
        closing = b"\r\n" + self._delimiter
        keep = len(closing) - 1  # a delimiter may straddle two chunks
        while True:
            found = self._buffer.find(closing)
            if found >= 0:
                if found:
                    yield self._buffer[:found]
                return
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                yield self._buffer[:cut]
                self._buffer = self._buffer[cut:]
            if not await self._more():
                raise MultipartError("the part has no closing delimiter")
