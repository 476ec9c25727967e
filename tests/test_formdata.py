"""The small-body multipart/form-data splitter agrees with Starlette's parser, or declines."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from gateway.edge.formdata import FormField, split_form

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
