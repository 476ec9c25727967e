"""A PACS stand-in for the security tests: a proxy in front of the real Orthanc that misbehaves on purpose (files an
upload under another PatientID, fails the clean-up DELETEs, answers the UID lookups late or not at all)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from starlette.types import Receive, Scope, Send

from tests.support.recorder import read_body


@dataclass
class CoercingPacs:
    """Forwards to Orthanc, replacing `old` with `new` (same length) in every STOW-RS body: files what it is sent
    under another PatientID. `fail_deletes`: answers 500 to every DELETE, as a PACS failing the clean-up would;
    `lookup_delay_s`: answers `/tools/lookup` that much later (a clinician's upload is then stored before its
    shared-UID lookups are in); `fail_lookups`: then answers them 500."""

    target: str
    old: bytes = b""
    new: bytes = b""
    fail_deletes: bool = False
    lookup_delay_s: float = 0.0
    fail_lookups: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        if scope["path"] == "/tools/lookup":
            await asyncio.sleep(self.lookup_delay_s)
        if (self.fail_deletes and scope["method"] == "DELETE") or (
                self.fail_lookups and scope["path"] == "/tools/lookup"):
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["method"] == "POST" and scope["path"] == "/dicom-web/studies":
            body = body.replace(self.old, self.new)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")]
        url = self.target + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.request(scope["method"], httpx.URL(url), headers=headers, content=body)
        out = [(k.encode(), v.encode()) for k, v in response.headers.items()
               if k.lower() not in ("content-length", "transfer-encoding", "connection")]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [*out, (b"content-length", str(len(response.content)).encode())]})
        await send({"type": "http.response.body", "body": response.content})
