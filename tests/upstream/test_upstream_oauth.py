"""OAuth2 client-credentials auth to the upstream (acceptance 5 of issue 2).

A local token endpoint issues short-lived tokens and a local DICOMweb stand-in accepts only unexpired ones (Orthanc
has no bearer-token auth, so no real PACS here can check them). The readiness probe makes the upstream requests.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import AppClient
from tests.support.servers import ThreadedServer, serve

LIFETIME_S = 3  # renewed when a fifth of it is left: 2.4 s after issue


@dataclass
class AuthorizationServer:
    """Token endpoint (client_secret_basic) and a protected DICOMweb resource in one app."""

    client_id: str = "gateway"
    client_secret: str = "s3cret/with+odd=chars"
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    rejected_expired: int = 0
    accepted: int = 0

    def app(self) -> Starlette:
        async def token(request: Request) -> Response:
            form = parse_qs((await request.body()).decode())
            self.token_requests.append(form)
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            expected = base64.b64encode(b"gateway:s3cret%2Fwith%2Bodd%3Dchars").decode()  # RFC 6749 §2.3.1
            if scheme != "Basic" or value != expected or form.get("grant_type") != ["client_credentials"]:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            access = secrets.token_urlsafe(16)
            self.issued[access] = time.monotonic() + LIFETIME_S
            return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": LIFETIME_S})

        async def studies(request: Request) -> Response:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            expiry = self.issued.get(value) if scheme == "Bearer" else None
            if expiry is None or time.monotonic() >= expiry:
                self.rejected_expired += expiry is not None
                return JSONResponse({"error": "invalid_token"}, status_code=401)
            self.accepted += 1
            return JSONResponse([], media_type="application/dicom+json")

        return Starlette(routes=[Route("/token", token, methods=["POST"]), Route("/dicom-web/studies", studies)])


@pytest.fixture
def authorization_server() -> Iterator[tuple[AuthorizationServer, ThreadedServer]]:
    state = AuthorizationServer()
    with serve(state.app()) as server:
        yield state, server


async def test_token_is_fetched_once_reused_and_renewed_before_expiry(
    app_client: AppClient, authorization_server: tuple[AuthorizationServer, ThreadedServer]
) -> None:
    state, server = authorization_server
    async with app_client(
        pacs_service_url=f"{server.url}/dicom-web",
        pacs_oauth_token_url=f"{server.url}/token",
        pacs_oauth_client_id=state.client_id,
        pacs_oauth_client_secret=state.client_secret,
        pacs_oauth_scope="dicom.read dicom.write",
    ) as client:
        # 20 concurrent first requests share one token request.
        answers = await asyncio.gather(*(client.get("/-/ready") for _ in range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        assert len(state.token_requests) == 1
        assert state.token_requests[0]["scope"] == ["dicom.read dicom.write"]
        # Reused while fresh.
        for _ in range(10):
            assert (await client.get("/-/ready")).status_code == 200
        assert len(state.token_requests) == 1
        # Keep calling across two lifetimes: renewed before each expiry, never sent expired.
        deadline = time.monotonic() + 2 * LIFETIME_S + 0.5
        while time.monotonic() < deadline:
            assert (await client.get("/-/ready")).status_code == 200
            await asyncio.sleep(0.05)
    assert state.rejected_expired == 0
    assert len(state.token_requests) == 3  # the first token, then one renewal per 2.4 s
    assert state.accepted > 100


async def test_rejected_client_credentials_are_502(
    app_client: AppClient, authorization_server: tuple[AuthorizationServer, ThreadedServer]
) -> None:
    _, server = authorization_server
    async with app_client(
        pacs_service_url=f"{server.url}/dicom-web",
        pacs_oauth_token_url=f"{server.url}/token",
        pacs_oauth_client_id="gateway",
        pacs_oauth_client_secret="wrong",
    ) as client:
        response = await client.get("/-/ready")
    assert response.status_code == 503
    assert response.json()["error"]["details"]["reason"] == (
        "the PACS token endpoint rejected the gateway's client credentials"
    )
