"""The small-body multipart/form-data splitter agrees with Starlette's parser, or declines."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from gateway.edge.formdata import FormField, read_form, split_form
from gateway.errors import PayloadTooLarge, UnsupportedMediaType

B = "b0und4ry"


def part(name: str, data: bytes, filename: str | None = "a.dcm", extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (f"--{B}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n").encode() + data + b"\r\n"


BODIES = {
    "one file": part("file", b"DICM" * 10) + f"--{B}--\r\n".encode(),
    "two files": part("file", b"x\r\n--not-it\r\n") + part("file", b"", "b.dcm") + f"--{B}--".encode(),
    "text field": part("note", b"hello", None) + part("file", b"abc") + f"--{B}--\r\n".encode(),
    "content type": part("file", b"abc", "c.dcm", "Content-Type: application/dicom\r\n") + f"--{B}--".encode(),
    "spaces in name": part("file", b"abc", "my scan.dcm") + f"--{B}--\r\n".encode(),
}
BROKEN = {
    "preamble": b"a preamble Starlette refuses\r\n" + part("file", b"abc") + f"--{B}--\r\n".encode(),
    "no closing": part("file", b"abc"),
    "no header end": f"--{B}\r\nContent-Disposition: form-data; name=\"file\"".encode(),
    "no disposition": f"--{B}\r\nContent-Type: text/plain\r\n\r\nabc\r\n--{B}--".encode(),
    "empty": b"",
    "no boundary": b"just bytes",
}


async def starlette_form(body: bytes) -> FormData:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    content_type = f"multipart/form-data; boundary={B}".encode()
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}
    return await Request(scope, receive).form()


def fields_as_list(fields: list[FormField]) -> list[tuple[str, str | tuple[str | None, bytes]]]:
    return [(f.name, bytes(f.value).decode() if f.filename is None else (f.filename, bytes(f.value))) for f in fields]


async def as_list(form: FormData) -> list[tuple[str, str | tuple[str | None, bytes]]]:
    out: list[tuple[str, str | tuple[str | None, bytes]]] = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            await value.seek(0)
            out.append((key, (value.filename, await value.read())))
        else:
            out.append((key, value))
    return out


@pytest.mark.parametrize("name", sorted(BODIES))
async def test_split_agrees_with_starlette(name: str) -> None:
    body = BODIES[name]
    mine = split_form(body, f"multipart/form-data; boundary={B}", max_files=10)
    theirs = await starlette_form(body)
    try:
        assert mine is not None
        assert fields_as_list(mine) == await as_list(theirs)
    finally:
        await theirs.close()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_split_declines_what_it_does_not_understand(name: str) -> None:
    assert split_form(BROKEN[name], f"multipart/form-data; boundary={B}", max_files=10) is None


def test_split_declines_without_a_boundary_and_above_max_files() -> None:
    assert split_form(BODIES["one file"], "multipart/form-data", max_files=10) is None
    assert split_form(BODIES["two files"], f"multipart/form-data; boundary={B}", max_files=1) is None


def request(body: bytes, chunks: int = 1, *, content_type: str = f"multipart/form-data; boundary={B}",
            declared: bool = True) -> Request:
    """A request whose body arrives in `chunks` pieces, with or without a Content-Length."""
    size = -(-len(body) // chunks) if body else 1
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
                for i, piece in enumerate(pieces)]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    headers = [(b"content-type", content_type.encode())]
    if declared:
        headers.append((b"content-length", str(len(body)).encode()))
    return Request({"type": "http", "method": "POST", "path": "/exams", "headers": headers}, receive)


async def read(req: Request, max_bytes: int = 1000) -> list[FormField] | FormData:
    return await read_form(req, max_bytes=max_bytes, max_files=10, refusal="POST /exams takes multipart/form-data",
                           what="the upload")


async def test_read_form_splits_a_small_declared_body_and_parses_a_streamed_one() -> None:
    body = BODIES["two files"]
    small = await read(request(body))
    assert isinstance(small, list)
    streamed = await read(request(body, chunks=3, declared=False))
    assert isinstance(streamed, FormData)
    try:
        assert fields_as_list(small) == await as_list(streamed)
    finally:
        await streamed.close()


@pytest.mark.parametrize("declared", [True, False])
async def test_read_form_refuses_a_body_past_the_cap_with_413(declared: bool) -> None:
    body = BODIES["one file"]
    with pytest.raises(PayloadTooLarge) as raised:
        await read(request(body, chunks=4, declared=declared), max_bytes=len(body) - 1)
    assert (raised.value.message, raised.value.details) == (
        "the upload is larger than the gateway accepts", {"limit_bytes": len(body) - 1})
    at_the_cap = await read(request(body, chunks=4, declared=declared), max_bytes=len(body))
    if isinstance(at_the_cap, FormData):
        await at_the_cap.close()
    assert len(at_the_cap) == 1


async def test_read_form_refuses_another_media_type_with_415_naming_it() -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        await read(request(BODIES["one file"], content_type="application/dicom"))
    assert (raised.value.message, raised.value.details) == (
        "POST /exams takes multipart/form-data", {"content_type": "application/dicom"})
