"""How the gateway authenticates itself to the PACS: a static bearer token, HTTP Basic, or OAuth2 client credentials.

Each gives the Authorization header for the next upstream request; the upstream client asks before every request
and reports a 401, so a renewable credential (OAuth2) heals without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Protocol
from urllib.parse import quote_plus

import httpx
import structlog
from authlib.oauth2.rfc6749.parameters import prepare_token_request

from gateway.errors import UpstreamCredentialsRejected, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

log = structlog.get_logger(__name__)


class UpstreamAuth(Protocol):
    """The gateway's credentials for the PACS, as an Authorization header value."""

    async def authorization(self) -> str: ...

    def rejected(self, authorization: str) -> None:
        """The PACS answered 401 to `authorization`: drop it if it can be renewed."""

    async def aclose(self) -> None: ...


class StaticAuthorization:
    """A fixed header: a static bearer token (`PACS_AUTHORIZATION_TOKEN`) or HTTP Basic credentials."""

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def bearer(cls, token: str) -> StaticAuthorization:
        return cls(f"Bearer {token}")

    @classmethod
    def basic(cls, username: str, password: str) -> StaticAuthorization:
        """RFC 7617: base64 of user-id ":" password, in UTF-8."""
        return cls(f"Basic {base64.b64encode(f'{username}:{password}'.encode()).decode('ascii')}")

    async def authorization(self) -> str:
        return self._value

    def rejected(self, authorization: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class OAuth2ClientCredentials:
    """OAuth2 client credentials grant (RFC 6749 §4.4), the token cached and renewed before it expires.

    The request body is built by authlib (`prepare_token_request`); the client authenticates with HTTP Basic
    (client_secret_basic, RFC 6749 §2.3.1, the method every authorization server must support). A token is renewed
    when less than a fifth of its lifetime (at most 60 s) is left, so requests never carry an expired token, and one
    lock makes concurrent requests share one renewal. An upstream 401 drops the cached token, so the next request
    fetches a fresh one (a revoked token heals without restart).
    """

    def __init__(self, *, token_url: str, client_id: str, client_secret: str, scope: str | None,
                 timeout: httpx.Timeout) -> None:
        self._token_url = token_url
        self._scope = scope
        # RFC 6749 §2.3.1: client id and secret are form-encoded before Basic encoding.
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(quote_plus(client_id), quote_plus(client_secret)),
            timeout=timeout,
        )
        self._lock = asyncio.Lock()
        self._access_token: str | None = None
        self._renew_at = 0.0
        self.fetches = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def authorization(self) -> str:
        return f"Bearer {await self._token()}"

    def rejected(self, authorization: str) -> None:
        if authorization == f"Bearer {self._access_token}":
            self._access_token = None

    async def _token(self) -> str:
        if self._access_token is not None and time.monotonic() < self._renew_at:
            return self._access_token
        async with self._lock:
            if self._access_token is not None and time.monotonic() < self._renew_at:
                return self._access_token
            return await self._fetch()

    async def _fetch(self) -> str:
        body = prepare_token_request("client_credentials", scope=self._scope)
        started = time.monotonic()
        self.fetches += 1
        try:
            response = await self._client.post(
                self._token_url, content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            )
        except httpx.TimeoutException:
            raise UpstreamTimeout("the PACS token endpoint did not answer in time") from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                "could not reach the PACS token endpoint", {"reason": type(exc).__name__}
            ) from None
        if response.status_code in (400, 401, 403):
            raise UpstreamCredentialsRejected(
                "the PACS token endpoint rejected the gateway's client credentials",
                {"upstream_status": response.status_code},
            )
        if response.status_code != 200:
            raise UpstreamFailed("the PACS token endpoint failed", {"upstream_status": response.status_code})
        try:
            payload = response.json()
            token = str(payload["access_token"])
            lifetime = float(payload.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise UpstreamFailed("the PACS token endpoint answered without an access token") from None
        self._access_token = token
        self._renew_at = started + lifetime - min(60.0, lifetime / 5)
        log.info("upstream_token_fetched", expires_in=lifetime)
        return token
