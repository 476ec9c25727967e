"""`ScopedParts` on crafted multipart answers: every split of the bytes into chunks, parts with and without a
Content-Length, parts whose header cannot be read, and answers with none of the caller's parts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.dicom.part10 import configure_pydicom
from gateway.edge.multipart import MultipartError, PartReader
from gateway.viewer.scoped_parts import ScopedParts
from tests.support.dicom_factory import generated

BOUNDARY = "b0undary"


@pytest.fixture(autouse=True)
def _pydicom_as_the_app_sets_it() -> None:
    configure_pydicom()  # its warnings about half-read values (a header cut mid-element) are not errors here


def answer(*parts: tuple[bytes, bool]) -> bytes:
    """A multipart/related answer; each part (a file's bytes, whether to give it a Content-Length)."""
    out = b"preamble\r\n"
    for body, counted in parts:
        length = f"Content-Length: {len(body)}\r\n".encode() if counted else b""
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n".encode() + length + b"\r\n" + body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def kept(data: bytes, patient_id: str, size: int) -> tuple[bool, bytes]:
    parts = ScopedParts(PartReader(chunks_of(data, size), BOUNDARY), BOUNDARY, patient_id)
    if not await parts.first():
        return False, b""
    return True, b"".join([chunk async for chunk in parts.body()])


@pytest.mark.parametrize("size", [1, 7, 100, 4096, 1 << 20])
@pytest.mark.parametrize("counted", [True, False])
async def test_only_the_callers_parts_pass_whatever_the_chunking(size: int, counted: bool) -> None:
    mine = [generated("ME").data for _ in range(2)]
    theirs = generated("THEM").data
    found, out = await kept(answer((mine[0], counted), (theirs, counted), (mine[1], counted)), "ME", size)
    assert found
    assert out == answer((mine[0], counted), (mine[1], counted)).removeprefix(b"preamble\r\n")
    assert b"THEM" not in out


async def test_no_part_of_the_caller_is_nothing_and_an_unreadable_part_is_nobodys() -> None:
    theirs = generated("THEM").data
    assert await kept(answer((theirs, True)), "ME", 512) == (False, b"")
    assert await kept(answer((b"not a DICOM file at all" * 10, True)), "ME", 512) == (False, b"")
    assert await kept(answer(), "ME", 512) == (False, b"")


async def test_a_prefix_of_a_patient_id_is_not_that_patient() -> None:
    theirs = generated("ME2").data
    assert await kept(answer((theirs, True)), "ME", 512) == (False, b"")


async def test_a_truncated_answer_is_an_error_not_a_short_success() -> None:
    data = answer((generated("ME").data, True))
    with pytest.raises(MultipartError):
        await kept(data[: len(data) // 2], "ME", 512)
