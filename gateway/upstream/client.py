"""The one client of the upstream PACS: its connection pools, opened and closed by the app's lifespan.

All upstream I/O goes through `UpstreamClient`, which
- builds URLs with the profile's query encoding (Orthanc needs literal `^ * ? , -`, docs/tests.md),
- authenticates as the gateway (static bearer, Basic or OAuth2 client credentials, `upstream_auth`),
- maps transport failures to the gateway's errors (`upstream_errors`), and upstream 401/403/5xx to 502,
- times every exchange for the access log and the metrics.

Two pools, because the upstream exchange is on every request's hot path, and on the 2-core machines the gateway is
sized for, CPU per exchange decides throughput:
- small exchanges (searches, lookups: a request and an answer read whole) go through `gateway.upstream.exchange`, a
  lean HTTP/1.1 pool of our own (113-118 µs of CPU per QIDO exchange under uvloop, against aiohttp's 411-450 µs);
- streams (WADO-RS retrievals, STOW-RS uploads) go through a pooled aiohttp session.
Each pool holds at most PACS_MAX_CONNECTIONS connections. httpx stays for the low-rate clients (JWKS, OAuth token
endpoint) and the tests: per exchange it costs more than either (docs/decisions.md, docs/benchmarks.md).

Timeouts: connect (including the wait for a pooled connection) and read (between two chunks) are bounded; the whole
exchange is not, so a large WADO-RS retrieval streams for as long as bytes keep coming.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import structlog
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.dicom.media import DICOM_JSON
from gateway.edge.context import add_upstream_time
from gateway.errors import (
    UpstreamCredentialsRejected,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.ops.metrics import Metrics
from gateway.upstream.auth import UpstreamAuth
from gateway.upstream.exchange import (
    Answer,
    ConnectFailed,
    ConnectTimedOut,
    ExchangeError,
    ExchangePool,
    ReadTimedOut,
    Unsendable,
)
from gateway.upstream.profiles import UpstreamProfile

log = structlog.get_logger(__name__)

# aiohttp's buffer per connection; also the largest chunk a stream hands over at once (fewer, larger chunks cost
# less CPU per byte relayed).
_READ_BUFFER = 1024 * 1024


@contextmanager
def upstream_errors(operation: str, metrics: Metrics | None = None) -> Iterator[None]:
    """Turn transport failures into gateway errors: timeout → 504, connection trouble → 502."""
    kind = None
    try:
        yield
    except ConnectTimedOut:
        kind = "connect_timeout"
        raise UpstreamTimeout(
            "the PACS did not accept a connection in time", {"operation": operation, "reason": "ConnectTimeout"}
        ) from None
    except ReadTimedOut:
        kind = "timeout"
        raise UpstreamTimeout(
            "the PACS did not answer in time", {"operation": operation, "reason": "ReadTimeout"}
        ) from None
    except ConnectFailed:
        kind = "connect"
        raise UpstreamUnavailable("could not connect to the PACS", {"operation": operation}) from None
    except Unsendable as exc:
        kind = "unsendable"
        raise UpstreamFailed("the request to the PACS could not be written", {"operation": operation,
                                                                            "reason": exc.reason}) from None
    except ExchangeError as exc:  # closed before a complete answer, or not an HTTP answer
        kind = "disconnect"
        raise UpstreamUnavailable(
            "the PACS closed the connection without a complete answer", {"operation": operation, "reason": exc.reason}
        ) from None
    except aiohttp.ConnectionTimeoutError:
        kind = "connect_timeout"
        raise UpstreamTimeout(
            "the PACS did not accept a connection in time", {"operation": operation, "reason": "ConnectTimeout"}
        ) from None
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError):
        kind = "timeout"
        raise UpstreamTimeout(
            "the PACS did not answer in time", {"operation": operation, "reason": "ReadTimeout"}
        ) from None
    except aiohttp.ClientConnectorError:
        kind = "connect"
        raise UpstreamUnavailable("could not connect to the PACS", {"operation": operation}) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        kind = "disconnect"
        raise UpstreamUnavailable(
            "the PACS closed the connection without a complete answer",
            {"operation": operation, "reason": type(exc).__name__},
        ) from None
    except aiohttp.ClientError as exc:
        kind = "transport"
        raise UpstreamUnavailable(
            "the PACS could not be reached", {"operation": operation, "reason": type(exc).__name__}
        ) from None
    finally:
        if kind is not None and metrics is not None:
            metrics.count_upstream_error(operation, kind)


def check_upstream_status(status: int, operation: str) -> None:
    """Raise for answers that are the upstream's fault, never the caller's: 401/403 and 5xx become 502.

    Other 4xx answers mean something per endpoint (404: no such study) and are left to the caller.
    """
    if status in (401, 403):
        raise UpstreamCredentialsRejected(
            "the upstream rejected the gateway's credentials", {"operation": operation, "upstream_status": status}
        )
    if status >= 500:
        raise UpstreamFailed("the PACS failed", {"operation": operation, "upstream_status": status})


class UpstreamAnswer:
    """A small upstream answer, read whole (QIDO, STOW-RS responses, token and JSON documents)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: CIMultiDictProxy[str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class UpstreamStream:
    """An upstream answer whose body is streamed; `aclose()` it when done (the body outlives the handler)."""

    def __init__(self, response: aiohttp.ClientResponse, operation: str, metrics: Metrics) -> None:
        self._response = response
        self._operation = operation
        self._metrics = metrics
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        with upstream_errors(self._operation, self._metrics):
            return await self._response.read()

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunks of up to 1 MiB), transport failures mapped (504/502)."""
        with upstream_errors(self._operation, self._metrics):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Releases the connection to the pool when the body was read to the end, closes it otherwise.
        self._response.release()


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """Timeouts (seconds) and pool size of the PACS connection (`PACS_*_TIMEOUT_S`, `PACS_MAX_CONNECTIONS`, ...)."""

    connect_s: float
    read_s: float  # between two chunks of an answer
    pool_s: float  # the wait for a free pooled connection
    ready_s: float  # the whole of a readiness probe
    max_connections: int
    keepalive_s: float  # how long an idle connection is kept (below Orthanc's 1 s)


class UpstreamClient:
    def __init__(self, *, service_url: str, native_url: str | None, profile: UpstreamProfile, metrics: Metrics,
                 limits: UpstreamLimits, auth: UpstreamAuth | None) -> None:
        self.profile = profile
        self.metrics = metrics
        # Trailing slash so that relative paths ("studies") join under the DICOMweb root.
        self.base_url = service_url.rstrip("/") + "/"
        # Orthanc serves DICOMweb at <root>/dicom-web and its native API at <root> (GET /dicom-web/info says so).
        native = native_url or service_url.rstrip("/").rsplit("/", 1)[0]
        self.native_url = native.rstrip("/") + "/"
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=limits.pool_s + limits.connect_s, sock_connect=limits.connect_s,
            sock_read=limits.read_s,
        )
        self._ready_timeout = aiohttp.ClientTimeout(total=limits.ready_s)
        self._limits = limits
        self._max_connections = limits.max_connections
        self._keepalive = limits.keepalive_s
        self._auth = auth
        self._session: aiohttp.ClientSession | None = None
        self._pools: dict[str, ExchangePool] = {}  # small exchanges, one pool per origin (DICOMweb, native API)

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive, use_dns_cache=True, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),  # the PACS's cookies are nobody's business here
            auto_decompress=False,  # bytes pass through as the PACS sent them
            read_bufsize=_READ_BUFFER,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._auth is not None:
            await self._auth.aclose()

    def url(self, path: str, params: Iterable[tuple[str, str]] = ()) -> URL:
        """The upstream URL of a DICOMweb path, its query encoded the way this upstream needs (kept as is)."""
        query = self.profile.query_string(params)
        raw = self.base_url + path.lstrip("/") + (f"?{query}" if query else "")
        return URL(raw, encoded=True)

    async def _headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        if self._auth is not None:
            out["Authorization"] = await self._auth.authorization()
        return out

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream client is used outside the app's lifespan")
        return self._session

    async def request(self, method: str, path: str, *, operation: str, params: Iterable[tuple[str, str]] = (),
                      headers: Mapping[str, str] | None = None, content: bytes | None = None,
                      time_limit: float | None = None) -> UpstreamAnswer:
        """One upstream exchange with its body read (for small answers: QIDO, JSON). Status checked as above."""
        answer = await self._exchange(method, self.url(path, params), operation, headers, content, time_limit)
        check_upstream_status(answer.status, operation)
        return UpstreamAnswer(answer.status, answer.headers, answer.body)

    async def _exchange(self, method: str, url: URL, operation: str, headers: Mapping[str, str] | None,
                        content: bytes | None, time_limit: float | None = None) -> Answer:
        """One small exchange through the lean pool, timed and its failures mapped (status not checked yet)."""
        self._opened()
        sent = await self._headers(headers)
        sent.setdefault("Accept", "*/*")
        if content is not None:
            sent.setdefault("Content-Type", "application/octet-stream")
        pool = self._pool(url)
        started = time.perf_counter()
        with upstream_errors(operation, self.metrics):
            if time_limit is None:
                answer = await pool.send(method, url.raw_path_qs, sent.items(), content)
            else:
                try:
                    async with asyncio.timeout(time_limit):
                        answer = await pool.send(method, url.raw_path_qs, sent.items(), content)
                except TimeoutError:
                    raise ReadTimedOut("the PACS did not answer in time") from None
        self._record(operation, answer.status, started)
        self._note_rejection(answer.status, sent)
        return answer

    def _pool(self, url: URL) -> ExchangePool:
        origin = url.origin()
        key = str(origin)
        pool = self._pools.get(key)
        if pool is None:
            limits = self._limits
            pool = self._pools[key] = ExchangePool(
                origin, max_connections=limits.max_connections, connect_s=limits.connect_s, read_s=limits.read_s,
                pool_s=limits.pool_s, keepalive_s=limits.keepalive_s)
        return pool

    async def open_stream(self, method: str, path: str, *, operation: str, params: Iterable[tuple[str, str]] = (),
                          headers: Mapping[str, str] | None = None,
                          content: bytes | AsyncIterator[bytes] | AsyncIterator[bytes | memoryview] | None = None,
                          ) -> UpstreamStream:
        """Send a request and return once the answer's headers are in; the caller streams the body and must
        `aclose()` the stream (a streamed body outlives the handler, so no context manager fits)."""
        response, started, sent = await self._send(method, path, operation, params, headers, content, None)
        self._record(operation, response.status, started)
        self._note_rejection(response.status, sent)
        try:
            check_upstream_status(response.status, operation)
        except UpstreamError:
            response.release()
            raise
        return UpstreamStream(response, operation, self.metrics)

    async def _send(self, method: str, path: str, operation: str, params: Iterable[tuple[str, str]],
                    headers: Mapping[str, str] | None, content: Any, limit: aiohttp.ClientTimeout | None,
                    ) -> tuple[aiohttp.ClientResponse, float, dict[str, str]]:
        """The request sent and the answer's headers in: (response, when it was sent, the headers sent)."""
        session = self._opened()
        sent = await self._headers(headers)
        started = time.perf_counter()
        with upstream_errors(operation, self.metrics):
            response = await session.request(method, self.url(path, params), headers=sent, data=content,
                                             timeout=limit or self._timeout)
        return response, started, sent

    async def native_resource(self, kind: str, resource_id: str) -> Any:
        """Orthanc's JSON description of `/{kind}/{resource_id}` (native API; `gateway.upstream.orthanc`), or
        None."""
        return await self.native_json(f"{kind}/{resource_id}")

    async def native_json(self, path: str, operation: str = "native_lookup", *, method: str = "GET",
                          content: bytes | None = None) -> Any:
        """The JSON answer of Orthanc's native `{method} /{path}` (`path` already encoded, query included), None on
        404."""
        status, body = await self.native_call(method, path, operation=operation, content=content)
        if status == 404:
            return None
        unexpected = UpstreamFailed("the PACS answered a lookup unexpectedly", {"upstream_status": status})
        if status != 200:
            raise unexpected
        try:
            return json.loads(body)
        except ValueError:
            raise unexpected from None

    async def native_call(self, method: str, path: str, *, operation: str, content: bytes | None = None
                          ) -> tuple[int, bytes]:
        """Orthanc's native `{method} /{path}` with any answer (`DELETE /instances/{id}`, an attachment's MD5): its
        status and body. Upstream 401/403/5xx raise as everywhere (`check_upstream_status`)."""
        answer = await self._exchange(method, URL(f"{self.native_url}{path}", encoded=True), operation,
                                      {"Accept": "application/json"}, content)
        check_upstream_status(answer.status, operation)
        return answer.status, answer.body

    async def native_delete(self, resource_id: str, *, operation: str) -> bool:
        """Delete one instance by its Orthanc id, as a security clean-up: True when Orthanc deleted it. The PACS's
        failure (an error status, no answer) is logged and counts as not deleted, rather than raised: a clean-up
        that fails must not stop the refusal and the security event it serves, which report how many it removed."""
        try:
            status, _ = await self.native_call("DELETE", f"instances/{resource_id}", operation=operation)
        except UpstreamError as exc:
            log.warning("upstream_cleanup_failed", operation=operation, error=exc.code, message=exc.message)
            return False
        return status == 200

    async def native_exists(self, kind: str, resource_id: str) -> bool:
        return await self.native_resource(kind, resource_id) is not None

    async def native_lookup(self, uid: str) -> list[tuple[str, str]]:
        """Every resource Orthanc holds under this DICOM UID, at any level, as (Type, Orthanc id) pairs.

        `POST /tools/lookup` with the UID as its body (orthanc.md §3 native REST): an index lookup, cheap whatever the
        archive's size. Two patients' studies sharing one StudyInstanceUID are two resources here.
        """
        found = await self.native_json("tools/lookup", "native_uid_lookup", method="POST", content=uid.encode())
        if not isinstance(found, list):
            raise UpstreamFailed("the PACS answered a UID lookup unexpectedly")
        return [(str(item.get("Type")), str(item.get("ID"))) for item in found if isinstance(item, dict)]

    async def readiness(self) -> str | None:
        """None when the upstream answers a cheap DICOMweb query; otherwise why not (for `/-/ready`)."""
        try:
            answer = await self.request(
                "GET", self.profile.readiness_path, operation="ready",
                headers={"Accept": DICOM_JSON}, time_limit=self._ready_timeout.total,
            )
        except UpstreamError as exc:
            return exc.message
        if answer.status_code != 200:
            return f"the PACS answered a DICOMweb search with status {answer.status_code}"
        return None

    def _note_rejection(self, status: int, sent: Mapping[str, str]) -> None:
        if status == 401 and self._auth is not None:
            self._auth.rejected(sent.get("Authorization", ""))

    def _record(self, operation: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        add_upstream_time(elapsed)
        self.metrics.observe_upstream(operation, status, elapsed)

