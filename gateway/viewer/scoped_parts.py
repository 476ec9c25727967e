"""A WADO-RS multipart answer passed on with only the caller's parts (PS3.18 §10.4: one part per instance).

The PACS answers a study or series retrieval with every instance it holds under the UID. When two patients' files
share that UID (`gateway.upstream.ownership`), some parts are another patient's, so each part's own PatientID is
read from its first bytes (`PatientIdProbe`, a few KiB) and the part is passed on only when it is the caller's; the
others are read past, never sent. The answer keeps the PACS's boundary and part headers; its length is no longer
known in advance, so it goes without a Content-Length.

Nothing is sent before the first kept part is found, so an answer with no part of the caller's is a plain 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from gateway.dicom.part10 import PatientIdProbe
from gateway.edge.multipart import PartReader

log = structlog.get_logger(__name__)


class ScopedParts:
    """The parts of `reader` whose file has exactly `patient_id` as its PatientID."""

    def __init__(self, reader: PartReader, boundary: str, patient_id: str) -> None:
        self._reader = reader
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._patient_id = patient_id
        self._pending: list[bytes] | None = None  # the first bytes of the part being passed on
        self.dropped = 0

    async def first(self) -> bool:
        """Read up to the first part that is the caller's; False when there is none."""
        return await self._next_kept()

    async def _next_kept(self) -> bool:
        while await self._reader.next_part():
            prefix = await self._probe()
            if prefix is not None:
                self._pending = prefix
                return True
            self.dropped += 1
            await self._reader.skip()
        if self.dropped:
            # A security event: the PACS holds another patient's files under the UID this caller asked for.
            log.warning("security_foreign_parts_dropped", parts=self.dropped)
        return False

    async def _probe(self) -> list[bytes] | None:
        """The part's first bytes when the part is the caller's; None (with the part partly read) otherwise."""
        probe = PatientIdProbe()
        prefix: list[bytes] = []
        body = self._reader.body()
        try:
            while not probe.done:
                chunk = await anext(body, None)
                if chunk is not None:
                    prefix.append(chunk)
                try:
                    probe.feed(chunk or b"", final=chunk is None)
                except ValueError:
                    return None  # a part whose header cannot be read is nobody's to see
        finally:
            await body.aclose()
        return prefix if probe.patient_id == self._patient_id else None

    async def first_body(self) -> AsyncIterator[bytes]:
        """Only the first kept part's body, unframed (a client that asked for one `application/dicom` body)."""
        pending, self._pending = self._pending or [], None
        for chunk in pending:
            yield chunk
        async for chunk in self._reader.body():
            yield chunk

    async def body(self) -> AsyncIterator[bytes]:
        """The answer: each kept part framed as the PACS framed it, then the closing delimiter."""
        while self._pending is not None:
            yield self._delimiter + b"\r\n" + self._reader.raw_headers + b"\r\n"
            for chunk in self._pending:
                yield chunk
            self._pending = None
            async for chunk in self._reader.body():
                yield chunk
            yield b"\r\n"
            await self._next_kept()
        yield self._delimiter + b"--\r\n"
