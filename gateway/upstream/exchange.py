"""Small upstream exchanges (a search, a lookup, a token) over a lean HTTP/1.1 connection pool of our own.

Every gateway search is one or more of these: a request without a body or with a small one, and an answer read
whole. aiohttp's client does far more per exchange than this needs (its tracing hooks, cookie and redirect
machinery, a StreamReader per answer). Measured per QIDO exchange with Orthanc under uvloop on the bench machine:
aiohttp 411-450 µs of CPU, this pool 113-118 µs, and 0.3 ms less latency. Streams (WADO-RS retrievals, STOW-RS
uploads) stay on aiohttp (`UpstreamClient.open_stream`), where the bytes, not the exchange, cost the time.

What it does, and no more:
- HTTP/1.1 with keep-alive; the answer parsed by llhttp (httptools), Content-Length or chunked; TLS when the URL says
  https (certificates verified against the system's CAs, the host name checked);
- one pool per upstream origin, at most `max_connections` exchanges at once, a wait for a free slot of at most
  `pool_s`; an idle connection is closed after `keepalive_s` (below Orthanc's own 1 s), or when the upstream says
  `Connection: close`;
- a connect timeout (`connect_s`) and a read timeout between two reads (`read_s`), one timer per exchange;
- an answer head of at most 64 KiB and a whole answer of at most `MAX_ANSWER_BYTES` (128 MiB), counted as bytes
  arrive; bytes the upstream sends that no request asked for (a second answer) drop the connection, so they can
  never be read as the next request's answer;
- an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, as aiohttp) on a reused connection that the upstream
  closed before answering (a keep-alive race) is sent again, once, on a new connection. Nothing else is retried.
Failures raise `ExchangeError` subclasses, which `upstream_errors` maps to the gateway's 502 and 504 like aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

_MAX_HEAD_BYTES = 64 * 1024  # of the upstream's answer head, counted as it arrives (aiohttp's lines: 8 KiB each)
# Of a whole answer, as it arrives: the largest small answer is a study's metadata (tens of MiB for thousands of
# instances); beyond this the answer is refused (502) rather than held.
MAX_ANSWER_BYTES = 128 * 1024 * 1024
# Sent once more on a new connection when a reused one died unanswered (the methods aiohttp retries: idempotent).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ExchangeError(Exception):
    """The exchange failed below HTTP: mapped by `gateway.upstream.client.upstream_errors`."""

    reason = "ClientError"


class ConnectFailed(ExchangeError):
    reason = "ClientConnectorError"


class ConnectTimedOut(ExchangeError):
    reason = "ConnectTimeout"


class ReadTimedOut(ExchangeError):
    reason = "ReadTimeout"


class Disconnected(ExchangeError):
    """The upstream closed the connection before its answer was complete."""

    reason = "ServerDisconnectedError"


class BadAnswer(ExchangeError):
    """The upstream's bytes are not an HTTP/1.1 answer, or not one the gateway reads (too large)."""

    reason = "ClientPayloadError"


class Unsendable(ExchangeError):
    """The request cannot be written as HTTP/1.1 (a control or non-Latin-1 character in its head)."""

    reason = "InvalidRequest"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one exchange at a time, its answer gathered by the parser's callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_s: float) -> None:
        self._loop = loop
        self._read_s = read_s
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0  # bytes read while the head is incomplete
        self._fields_bytes = 0  # of the header fields parsed
        self._in_head = True
        self._answer_bytes = 0
        self._body: list[bytes] = []
        self._status = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.received = False  # a byte of the current answer arrived
        self.reusable = False  # the last answer was complete and the upstream keeps the connection open
        self.closed = False
        self.idle_since = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for (a second answer, trailing garbage): they would be read as the next request's
            # answer. The connection is dropped instead.
            self.close()
            return
        self.received = True
        self._last_read = self._loop.time()
        self._answer_bytes += len(data)
        if self._answer_bytes > MAX_ANSWER_BYTES:
            self._fail(BadAnswer("the PACS's answer is larger than the gateway reads whole"))
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the PACS switched protocols"))
            return
        except httptools.HttpParserError:
            self._fail(BadAnswer("the PACS's answer is not HTTP/1.1"))
            return
        # Reads that have not completed the head yet, counted as they arrive: llhttp would buffer a header line that
        # never ends, whatever its size. (A read that completes the head may carry any amount of body with it.)
        if self._in_head and self._head_bytes > _MAX_HEAD_BYTES:
            self._fail(BadAnswer("the PACS's answer head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self._waiter is None or self._waiter.done():
            return
        if self._status >= 200 and exc is None and self._delimited_by_close():
            self.on_message_complete()  # an answer with neither length nor chunks ends with the connection
            return
        self._waiter.set_exception(Disconnected("the PACS closed the connection"))

    def _delimited_by_close(self) -> bool:
        names = {name.lower() for name, _ in self._headers}
        return "content-length" not in names and "transfer-encoding" not in names

    # --- httptools callbacks ------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer in the same read as the first: see data_received
            raise Disconnected("the PACS sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields_bytes += len(name) + len(value)
        if self._fields_bytes > _MAX_HEAD_BYTES:  # a head that came whole in one read is bounded here
            raise BadAnswer("the PACS's answer head is too large")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._in_head = False

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._headers, self._head_bytes, self._fields_bytes, self._in_head = [], 0, 0, True
            return
        self._cancel_timer()
        self.reusable = not self.closed and self._parser.should_keep_alive()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, CIMultiDictProxy(CIMultiDict(self._headers)), b"".join(self._body)))

    # --- the exchange -------------------------------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes | None) -> Answer:
        if self._transport is None or self.closed:
            raise Disconnected("the connection is closed")
        self._waiter = self._loop.create_future()
        self._headers, self._head_bytes, self._in_head, self._body, self._status = [], 0, True, [], 0
        self._answer_bytes, self._fields_bytes = 0, 0
        self.received, self.reusable = False, False
        self._last_read = self._loop.time()
        self._timer = self._loop.call_at(self._last_read + self._read_s, self._check_read_time)
        self._transport.write(head + body if body else head)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _check_read_time(self) -> None:
        """One timer per exchange: when it fires early (bytes came meanwhile), it sleeps again for what is left."""
        due = self._last_read + self._read_s
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_read_time)
            return
        self._timer = None
        self._fail(ReadTimedOut("the PACS did not answer in time"))

    def _fail(self, error: ExchangeError) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if self._transport is not None:
            self._transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ExchangePool:
    """The kept-alive connections to one upstream origin (`scheme://host:port`)."""

    def __init__(self, origin: URL, *, max_connections: int, connect_s: float, read_s: float, pool_s: float,
                 keepalive_s: float) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError(f"an http:// or https:// upstream is needed, not {origin}")
        if origin.user is not None or origin.password is not None:
            raise ValueError("credentials in the PACS URL: give them as PACS_USERNAME and PACS_PASSWORD")
        self._host = origin.raw_host or origin.host  # IDNA-encoded as yarl encodes it, for the connection and SNI
        self._port = origin.port or (443 if origin.scheme == "https" else 80)
        named = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address, bracketed (RFC 9110 §7.2)
        self._host_header = named if origin.is_default_port() else f"{named}:{self._port}"
        self._ssl = ssl.create_default_context() if origin.scheme == "https" else None
        self._connect_s = connect_s
        self._read_s = read_s
        self._pool_s = pool_s
        self._keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()

    async def send(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None,
                   ) -> Answer:
        """One exchange: `target` is the request-target (path and query, already encoded)."""
        head = self._head(method, target, headers, body)
        try:
            async with asyncio.timeout(self._pool_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ConnectTimedOut("no free connection to the PACS in time") from None
        try:
            return await self._exchange(method, head, body)
        finally:
            self._slots.release()

    async def _exchange(self, method: str, head: bytes, body: bytes | None) -> Answer:
        first = True
        while True:
            connection = self._take_idle() if first else None
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            try:
                answer = await connection.exchange(head, body)
            except Disconnected:
                connection.close()
                # A kept-alive connection the upstream closed as we sent: an idempotent request is sent again, once,
                # on a new one.
                if first and reused and method in _IDEMPOTENT and not connection.received:
                    first = False
                    continue
                raise
            except BaseException:
                connection.close()  # a cancelled or failed exchange leaves the connection mid-answer
                raise
            if connection.reusable and not connection.closed:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be closed by the upstream
            if not connection.closed and now - connection.idle_since < self._keepalive_s:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, self._read_s), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError:
            raise ConnectTimedOut("the PACS did not accept a connection in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to the PACS ({type(exc).__name__})") from None
        return connection

    def _head(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        # Everything here is the gateway's own (encoded URLs, its headers), but a CR, LF or NUL would split the
        # request: refuse rather than send it. A space is refused in the target for the same reason.
        if " " in target or any(c in line for line in lines for c in "\r\n\0"):
            raise Unsendable("a request to the PACS with a control character in its head")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise Unsendable("a request to the PACS with a character outside Latin-1 in its head") from None
