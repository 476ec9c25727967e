"""A recording reverse proxy: sits between the gateway and the real Orthanc and remembers every request it passed.

Tests use it to assert what the upstream was (and was not) asked, with the real upstream still answering.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx
from starlette.types import Message, Receive, Scope, Send

_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"}


async def read_body(receive: Receive) -> bytes:
    """A request's whole body, as an ASGI app receives it."""
    body = b""
    while True:
        message: Message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str  # raw, as sent on the wire
    body: bytes = b""  # the request body's first 4 KiB

    @property
    def target(self) -> str:
        """Path and query, percent-escapes decoded: what a server that decodes would understand."""
        return unquote(f"{self.path}?{self.query}")


@dataclass
class RecordingProxy:
    target: str  # e.g. http://127.0.0.1:8042
    seen: list[Seen] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)  # path -> seconds to hold its answer back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        query = scope["query_string"].decode("latin-1")
        path = scope["raw_path"].decode("latin-1")
        body = await read_body(receive)
        self.seen.append(Seen(scope["method"], path, query, body[:4096]))
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        url = httpx.URL(self.target + path)
        if query:
            url = url.copy_with(query=query.encode("latin-1"))
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.request(scope["method"], url, headers=headers, content=body)
        if path in self.delays:
            await asyncio.sleep(self.delays[path])
        out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.encode() not in _HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [*out, (b"content-length", str(len(response.content)).encode())]})
        await send({"type": "http.response.body", "body": response.content})

    def targets(self) -> list[str]:
        return [seen.target for seen in self.seen]
