"""The files of an upload as the gateway holds them while it checks and stores them: each a view of a small body
held in memory or a file spooled by Starlette's parser (`gateway.edge.formdata.read_form`), with its header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import KW_ONLY, dataclass

from starlette.datastructures import FormData, UploadFile

from gateway.dicom.part10 import (
    PREAMBLE_LENGTH,
    InstanceHeader,
    check_data_structure,
    check_file_structure,
    read_header,
    read_header_data,
)
from gateway.edge.formdata import FormField
from gateway.errors import BadRequest, UnprocessableContent

CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FilePart:
    """One uploaded file: a view of a request body held in memory, or a file spooled by Starlette's parser."""

    filename: str
    _: KW_ONLY  # one of the two, named: `FilePart(name, data=view)` or `FilePart(name, spooled=file)`
    data: memoryview | None = None
    spooled: UploadFile | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.spooled.size or 0) if self.spooled else 0

    @property
    def blocks(self) -> bool:
        """Reading it blocks (a file rolled to disk): read it from a worker thread."""
        return self.spooled is not None and not self.spooled._in_memory

    def header(self) -> InstanceHeader:
        if self.data is not None:
            return read_header_data(self.data, self.filename)
        assert self.spooled is not None
        return read_header(self.spooled.file, self.filename, check=False)

    def check_structure(self) -> None:
        if self.data is not None:
            check_data_structure(self.data, self.filename)
        else:
            assert self.spooled is not None
            check_file_structure(self.spooled.file, self.filename, in_memory=self.spooled._in_memory)

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The file after its preamble, in pieces of at most `CHUNK` bytes."""
        if self.data is not None:
            yield self.data[PREAMBLE_LENGTH:]
            return
        assert self.spooled is not None
        await self.spooled.seek(PREAMBLE_LENGTH)
        while chunk := await self.spooled.read(CHUNK):
            yield chunk


@dataclass(frozen=True, slots=True)
class Upload:
    part: FilePart
    header: InstanceHeader

    @property
    def filename(self) -> str:
        return self.part.filename

    @property
    def size(self) -> int:
        return self.part.size


def file_parts(body: list[FormField] | FormData) -> list[FilePart]:
    """The uploaded files, in order; 400 for a field not named `file`, 422 for a text field."""
    items: list[tuple[str, str | None, memoryview | UploadFile | str]]
    if isinstance(body, FormData):
        items = [(name, value.filename if isinstance(value, UploadFile) else None, value)
                 for name, value in body.multi_items()]
    else:
        items = [(f.name, f.filename, f.value if f.filename is not None else "") for f in body]
    parts: list[FilePart] = []
    for index, (name, filename, value) in enumerate(items):
        if name != "file":
            raise BadRequest(f"unexpected form field {name!r}: send the DICOM files as parts named 'file'",
                             {"field": name})
        fallback = f"part {index + 1}"
        if isinstance(value, str):
            raise UnprocessableContent(f"{fallback} is a text field, not a file", {"file": fallback})
        if isinstance(value, memoryview):
            parts.append(FilePart(filename or fallback, data=value))
        else:
            parts.append(FilePart(filename or fallback, spooled=value))
    return parts
