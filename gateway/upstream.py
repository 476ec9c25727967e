"""The one client of the upstream PACS: a pooled `httpx.AsyncClient`, opened and closed by the app's lifespan.

All upstream I/O goes through `UpstreamClient`, which
- builds URLs with the profile's query encoding (Orthanc needs literal `^ * ? , -`, orthanc.md pitfall 2),
- maps transport failures to the gateway's errors (`upstream_errors`), and upstream 401/403/5xx to 502,
- times every exchange for the access log and the metrics.

Timeouts: connect, read (between two chunks), write and pool are bounded; the whole exchange is not, so a large
WADO-RS retrieval streams for as long as bytes keep coming.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

import httpx

from gateway.context import add_upstream_time
from gateway.errors import (
    ServiceUnavailable,
    UpstreamCredentialsRejected,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.profiles import DICOM_JSON, UpstreamProfile
from gateway.settings import Settings
from gateway.upstream_auth import OAuth2ClientCredentials, upstream_auth


@contextmanager
def upstream_errors(operation: str, metrics: Metrics | None = None) -> Iterator[None]:
    """Turn httpx transport failures into gateway errors: timeout → 504, connection trouble → 502."""
    kind = None
    try:
        yield
    except httpx.PoolTimeout:
        kind = "pool_timeout"
        raise ServiceUnavailable(
            "the gateway has too many requests in flight to the PACS; retry shortly", {"operation": operation}
        ) from None
    except httpx.TimeoutException as exc:
        kind = "timeout"
        raise UpstreamTimeout(
            "the PACS did not answer in time", {"operation": operation, "reason": type(exc).__name__}
        ) from None
    except httpx.ConnectError:
        kind = "connect"
        raise UpstreamUnavailable("could not connect to the PACS", {"operation": operation}) from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        kind = "disconnect"
        raise UpstreamUnavailable(
            "the PACS closed the connection without a complete answer",
            {"operation": operation, "reason": type(exc).__name__},
        ) from None
    except httpx.TransportError as exc:
        kind = "transport"
        raise UpstreamUnavailable(
            "the PACS could not be reached", {"operation": operation, "reason": type(exc).__name__}
        ) from None
    finally:
        if kind is not None and metrics is not None:
            metrics.count_upstream_error(operation, kind)


def check_upstream_status(response: httpx.Response, operation: str) -> None:
    """Raise for answers that are the upstream's fault, never the caller's: 401/403 and 5xx become 502.

    Other 4xx answers mean something per endpoint (404: no such study) and are left to the caller.
    """
    status = response.status_code
    if status in (401, 403):
        raise UpstreamCredentialsRejected(
            "the upstream rejected the gateway's credentials", {"operation": operation, "upstream_status": status}
        )
    if status >= 500:
        raise UpstreamFailed("the PACS failed", {"operation": operation, "upstream_status": status})


class UpstreamClient:
    def __init__(
        self,
        settings: Settings,
        profile: UpstreamProfile,
        metrics: Metrics,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.profile = profile
        self.metrics = metrics
        # Trailing slash so that relative paths ("studies") join under the DICOMweb root.
        self.base_url = str(settings.pacs_service_url).rstrip("/") + "/"
        timeout = httpx.Timeout(
            connect=settings.pacs_connect_timeout_s,
            read=settings.pacs_read_timeout_s,
            write=settings.pacs_read_timeout_s,
            pool=settings.pacs_pool_timeout_s,
        )
        self._ready_timeout = settings.ready_timeout_s
        self._auth = upstream_auth(settings, timeout)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=settings.pacs_max_connections,
                max_keepalive_connections=settings.pacs_max_connections,
                keepalive_expiry=settings.pacs_keepalive_expiry_s,
            ),
            auth=self._auth,
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
        if isinstance(self._auth, OAuth2ClientCredentials):
            await self._auth.aclose()

    def url(self, path: str, params: Iterable[tuple[str, str]] = ()) -> httpx.URL:
        """The upstream URL of a DICOMweb path, its query encoded the way this upstream needs."""
        url = httpx.URL(self.base_url + path.lstrip("/"))
        query = self.profile.query_string(params)
        # Set the raw query: httpx would otherwise percent-encode characters the profile keeps literal.
        return url.copy_with(query=query.encode("ascii")) if query else url

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        time_limit: float | None = None,
    ) -> httpx.Response:
        """One upstream exchange with its body read (for small answers: QIDO, JSON). Status checked as above."""
        request = self._client.build_request(
            method, self.url(path, params), headers=headers, content=content,
            timeout=time_limit if time_limit is not None else httpx.USE_CLIENT_DEFAULT,
        )
        started = time.perf_counter()
        with upstream_errors(operation, self.metrics):
            response = await self._client.send(request)
            await response.aread()
        self._record(operation, response.status_code, started)
        check_upstream_status(response, operation)
        return response

    async def open_stream(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> httpx.Response:
        """Send a request and return once the answer's headers are in; the caller streams the body and must
        `aclose()` the response (a streamed body outlives the handler, so no context manager fits)."""
        request = self._client.build_request(method, self.url(path, params), headers=headers, content=content)
        started = time.perf_counter()
        with upstream_errors(operation, self.metrics):
            response = await self._client.send(request, stream=True)
        self._record(operation, response.status_code, started)
        try:
            check_upstream_status(response, operation)
        except UpstreamError:
            await response.aclose()
            raise
        return response

    async def read_body(self, response: httpx.Response, operation: str) -> bytes:
        """The whole (small) body of a streamed answer, transport failures mapped."""
        with upstream_errors(operation, self.metrics):
            return await response.aread()

    async def iter_raw(self, response: httpx.Response, operation: str) -> AsyncIterator[bytes]:
        """The body of a streamed answer as it arrives, transport failures mapped (504/502)."""
        with upstream_errors(operation, self.metrics):
            async for chunk in response.aiter_raw():
                yield chunk

    async def readiness(self) -> str | None:
        """None when the upstream answers a cheap DICOMweb query; otherwise why not (for `/-/ready`)."""
        try:
            response = await self.request(
                "GET", self.profile.readiness_path, operation="ready",
                headers={"Accept": DICOM_JSON}, time_limit=self._ready_timeout,
            )
        except (UpstreamError, ServiceUnavailable) as exc:
            return exc.message
        if response.status_code != 200:
            return f"the PACS answered a DICOMweb search with status {response.status_code}"
        return None

    def _record(self, operation: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        add_upstream_time(elapsed)
        self.metrics.observe_upstream(operation, status, elapsed)
