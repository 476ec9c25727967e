"""The HTTP edge: limits on request heads, enforced in uvicorn's httptools protocol before the app sees a request.

uvicorn bounds none of this itself with httptools (llhttp parses heads of any size, and a connection that never
finishes its first head is never closed; h11 bounds the head but not the time). `EdgeProtocol` adds, per
connection and request, the limits that servers facing the internet set (nginx `large_client_header_buffers` and
`client_header_timeout`, Apache `LimitRequestFields`):

- a header field (name and value) of at most `max_field_bytes`, at most `max_fields` fields and `max_head_bytes` of
  head in all: 431 (RFC 6585 §5); a request-target longer than the whole head allows: 414 (RFC 9110 §15.5.15);
- the head complete within `head_timeout_s` of the connection (first request) or of its first byte (later requests
  on a kept-alive connection): 408 (RFC 9110 §15.5.9) and the connection closed; silently closed when nothing came;
- a query string of at most `max_query_bytes` (414) and `max_query_params` parameters (400).

The cost on the hot path is a clock reading per request and one pass over the parsed fields at the end of the head
(measured: 5 µs per request with a browser's twelve fields, 25 instead of 20 µs for uvicorn's protocol and a trivial
app; a proxied request costs ~1.5 ms of CPU). Refusals are the gateway's JSON error, with `Connection: close`.
"""

from __future__ import annotations

import asyncio
from array import array
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import error_response

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_field_bytes: int
    max_head_bytes: int
    max_fields: int
    head_timeout_s: float
    max_query_bytes: int
    max_query_params: int


def protocol_for(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The protocol class to give uvicorn (`http=`): uvicorn builds one per connection from its config only."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits})


class _Refusal(Exception):
    """Raised by a parser callback to stop parsing; answered by `EdgeProtocol.refuse`."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class _Parser(httptools.HttpRequestParser):
    """httptools' parser, except that a `_Refusal` raised by a callback is answered instead of being a parse error
    (which uvicorn would answer with a plain-text 400 and a misleading warning)."""

    def __init__(self, protocol: EdgeProtocol) -> None:
        super().__init__(protocol)
        self._protocol = protocol

    def feed_data(self, data: bytes | bytearray | memoryview[int] | array[int]) -> None:
        try:
            super().feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refusal):
                raise
            self._protocol.refuse(exc.__context__)


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits]

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.parser = _Parser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets on its own parser
        # One timer per connection, not per request: it looks at when the current head started and sleeps again.
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = 0.0  # loop time: the connection (first request) or the head's first byte (later ones)
        self._in_head = True  # reading a request head (a connection starts with one)
        self._head_begun = False  # a byte of the current head has arrived
        self._head_received = 0  # bytes read since the head began, in whole reads: bounds what llhttp buffers
        self._refused = False

    # -- connection ------------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._check_head_time)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_received += len(data)
        super().data_received(data)
        # A header line that never ends is never handed over by llhttp: cut it off by the bytes read.
        if self._in_head and not self._refused and self._head_received > self.limits.max_head_bytes:
            self.refuse(self._head_too_large())

    # -- parser callbacks ------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.cycle is not None:  # a later request on a kept-alive connection: its time starts now
            self._head_started = self.loop.time()
        self._in_head = True
        self._head_begun = True

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_head_bytes:
            raise _Refusal(414, "uri_too_long", "the request-target is longer than the gateway reads",
                           {"limit_bytes": self.limits.max_head_bytes})

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_begun = False
        self._head_received = 0
        self._check_head()
        super().on_headers_complete()

    def _check_head(self) -> None:
        """The limits on the head just parsed: checked once, at its end (bytes read bound it meanwhile)."""
        limits = self.limits
        if len(self.headers) > limits.max_fields:
            raise _Refusal(431, "request_header_fields_too_large", "the request has more header fields than the "
                           "gateway reads", {"limit_fields": limits.max_fields, "limit": "fields"})
        total = len(self.url)
        for name, value in self.headers:
            size = len(name) + len(value)
            if size > limits.max_field_bytes:
                raise _Refusal(431, "request_header_fields_too_large", "a header field is larger than the gateway "
                               "reads", {"limit_bytes": limits.max_field_bytes, "limit": "field"})
            total += size
        if total > limits.max_head_bytes:
            raise self._head_too_large()
        mark = self.url.find(b"?")
        if mark >= 0:
            if len(self.url) - mark - 1 > limits.max_query_bytes:
                raise _Refusal(414, "uri_too_long", "the query string is longer than the gateway reads",
                               {"limit_bytes": limits.max_query_bytes})
            if self.url.count(b"&", mark) >= limits.max_query_params:
                raise _Refusal(400, "bad_request", "the query string has more parameters than the gateway reads",
                               {"limit_parameters": limits.max_query_params})

    # -- the head timeout ------------------------------------------------------------------------------------------

    def _check_head_time(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        timeout = self.limits.head_timeout_s
        left = self._head_started + timeout - self.loop.time() if self._in_head else timeout
        if left > 0:  # no head being read (a body, a response, an idle keep-alive), or time left: look again then
            self._head_timer = self.loop.call_later(left, self._check_head_time)
        elif not self._head_begun:  # nothing sent at all: close as an idle keep-alive connection is closed
            self.transport.close()
        else:
            self.refuse(_Refusal(408, "request_timeout", "the request head did not arrive in time",
                                 {"limit_s": timeout}))

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # -- refusing --------------------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """A head llhttp cannot parse: uvicorn answers it in plain text; the gateway's errors are JSON."""
        self.refuse(_Refusal(400, "bad_request", "the request is not valid HTTP/1.1", {}))

    def _head_too_large(self) -> _Refusal:
        return _Refusal(431, "request_header_fields_too_large", "the request head is larger than the gateway reads",
                        {"limit_bytes": self.limits.max_head_bytes, "limit": "head"})

    def refuse(self, refusal: _Refusal) -> None:
        """Answer `refusal` (no app is running for this head) and close the connection."""
        self._refused = True
        self._cancel_head_timer()
        # Limits and sizes only: the head itself may hold PHI (patient IDs in the query) and is never logged.
        log.info("http_request_refused", status=refusal.status, code=refusal.code, **refusal.details)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head under an unfinished response: no room for an answer
            return
        body = bytes(error_response(refusal.status, refusal.code, refusal.message, refusal.details).body)
        content = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()
