"""How the gateway authenticates itself to the PACS: a static bearer token, HTTP Basic, or OAuth2 client credentials.

Each is an `httpx.Auth`, so the upstream client stays one pooled `httpx.AsyncClient` whatever the method.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Generator
from urllib.parse import quote_plus

import httpx
import structlog
from authlib.oauth2.rfc6749.parameters import prepare_token_request

from gateway.errors import UpstreamCredentialsRejected, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import Settings

log = structlog.get_logger(__name__)


class BearerToken(httpx.Auth):
    """A static token (`PACS_AUTHORIZATION_TOKEN`), e.g. one minted by the platform for the gateway."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class OAuth2ClientCredentials(httpx.Auth):
    """OAuth2 client credentials grant (RFC 6749 §4.4), the token cached and renewed before it expires.

    The request body is built by authlib (`prepare_token_request`); the client authenticates with HTTP Basic
    (client_secret_basic, RFC 6749 §2.3.1, the method every authorization server must support). A token is renewed
    when less than a fifth of its lifetime (at most 60 s) is left, so requests never carry an expired token, and one
    lock makes concurrent requests share one renewal. An upstream 401 drops the cached token, so the next request
    fetches a fresh one (a revoked token heals without restart).
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None,
                 timeout: httpx.Timeout, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._token_url = token_url
        self._scope = scope
        # RFC 6749 §2.3.1: client id and secret are form-encoded before Basic encoding.
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(quote_plus(client_id), quote_plus(client_secret)),
            timeout=timeout, transport=transport,
        )
        self._lock = asyncio.Lock()
        self._access_token: str | None = None
        self._renew_at = 0.0
        self.fetches = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            self._forget(token)

    def _forget(self, token: str) -> None:
        if self._access_token == token:
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


def upstream_auth(settings: Settings, timeout: httpx.Timeout,
                  token_transport: httpx.AsyncBaseTransport | None = None) -> httpx.Auth | None:
    """The auth the settings ask for (they allow at most one method)."""
    if settings.pacs_authorization_token is not None:
        return BearerToken(settings.pacs_authorization_token.get_secret_value())
    if settings.pacs_username is not None and settings.pacs_password is not None:
        return httpx.BasicAuth(settings.pacs_username, settings.pacs_password.get_secret_value())
    if (
        settings.pacs_oauth_token_url is not None
        and settings.pacs_oauth_client_id is not None
        and settings.pacs_oauth_client_secret is not None
    ):
        return OAuth2ClientCredentials(
            str(settings.pacs_oauth_token_url), settings.pacs_oauth_client_id,
            settings.pacs_oauth_client_secret.get_secret_value(), settings.pacs_oauth_scope, timeout,
            transport=token_transport,
        )
    return None
