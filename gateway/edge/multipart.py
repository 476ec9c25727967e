"""multipart/related (RFC 2387) as DICOMweb uses it (PS3.18 §8.6.1.2), streamed both ways.

- `related_part_header` / `related_closing`: the framing of a STOW-RS request body, written around bytes that stream
  from elsewhere (the length of the whole body is known in advance, so it goes with a Content-Length).
- `PartReader`: reads a WADO-RS answer part after part, each body streamed, never buffered whole: by its
  Content-Length when the part has one (Orthanc's do), else up to the next delimiter. `SinglePartReader` is the
  case of an answer that holds one part (one instance).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator

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


class PartReader:
    """The parts of a multipart body arriving as `chunks`, one after another, none of them buffered whole.

    `await next_part()` reads the next part's headers (False at the closing delimiter); then `body()` yields that
    part's body, by its Content-Length when it has one (Orthanc's parts do), else up to the next delimiter. A body
    must be read to its end (or `skip()`ped) before the next part is asked for.
    """

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str) -> None:
        self._chunks = chunks
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._buffer = b""
        self._started = False
        self.headers: dict[str, str] = {}
        self.raw_headers = b""  # the part's header lines as sent, each ending in CRLF
        self.length: int | None = None
        self._remaining: int | None = None  # of a counted body, the bytes not read yet

    async def _more(self) -> bool:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            return False
        self._buffer += chunk
        return True

    async def next_part(self) -> bool:
        """Read the next part's headers; False when the closing delimiter comes instead."""
        while True:
            # The first delimiter may follow a preamble; every later one directly follows the previous body (RFC 2046
            # §5.1.1: the CRLF before a delimiter belongs to it).
            start = self._buffer.find(self._delimiter) if not self._started else (
                2 if self._buffer.startswith(b"\r\n" + self._delimiter) else -1)
            after = start + len(self._delimiter)
            if start >= 0:
                if len(self._buffer) >= after + 2:
                    if self._buffer[after : after + 2] == b"--":
                        return False
                    end = self._buffer.find(b"\r\n\r\n", after)
                    if end >= 0:
                        break
            elif self._started and len(self._buffer) >= len(self._delimiter) + 2:
                raise MultipartError("a part is not followed by a delimiter")
            if len(self._buffer) > _MAX_PART_HEADER_BYTES:
                raise MultipartError("no part headers in 16 KiB")
            if not await self._more():
                raise MultipartError("the multipart answer ended before its closing delimiter")
        self._started = True
        self.raw_headers = self._buffer[after:end].lstrip(b" \t").removeprefix(b"\r\n") + b"\r\n"
        if self.raw_headers == b"\r\n":
            self.raw_headers = b""
        self.headers = {}
        for line in self.raw_headers.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        self._buffer = self._buffer[end + 4 :]
        self.length = None
        length = self.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit() and len(length) <= 15):
                raise MultipartError(f"bad part Content-Length {length!r}")
            self.length = int(length)
        self._remaining = self.length
        return True

    async def body(self) -> AsyncGenerator[bytes, None]:
        """The current part's body from where it was left (a body may be read in several goes)."""
        if self._remaining is not None:
            async for chunk in self._counted():
                yield chunk
        else:
            async for chunk in self._delimited():
                yield chunk

    async def skip(self) -> None:
        """Read past the current part's body."""
        async for _ in self.body():
            pass

    async def _counted(self) -> AsyncIterator[bytes]:
        while self._remaining:
            if not self._buffer and not await self._more():
                raise MultipartError(f"the part ended {self._remaining} bytes short of its Content-Length")
            chunk, self._buffer = self._buffer[: self._remaining], self._buffer[self._remaining :]
            self._remaining -= len(chunk)
            yield chunk

    async def _delimited(self) -> AsyncIterator[bytes]:
        closing = b"\r\n" + self._delimiter
        keep = len(closing) - 1  # a delimiter may straddle two chunks
        while True:
            # The buffer is cut before each yield, so a body read in several goes never repeats a byte.
            found = self._buffer.find(closing)
            if found >= 0:
                chunk, self._buffer = self._buffer[:found], self._buffer[found:]
                if chunk:
                    yield chunk
                return
            if len(self._buffer) > keep:
                cut = len(self._buffer) - keep
                chunk, self._buffer = self._buffer[:cut], self._buffer[cut:]
                yield chunk
            if not await self._more():
                raise MultipartError("the part has no closing delimiter")


class SinglePartReader(PartReader):
    """The first part of a multipart body: `await open()` for its headers, then `body()`."""

    async def open(self) -> dict[str, str]:
        """Skip any preamble, read the first part's headers; the body is what remains."""
        if not await self.next_part():
            raise MultipartError("the multipart answer ended before its first part")
        return self.headers
