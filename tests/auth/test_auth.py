"""Inbound JWT authentication against a real JWKS endpoint on loopback (acceptance 4 of issue 2)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import OctKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import AppClient, TokenIssuer
from tests.support.servers import ThreadedServer, serve


class JwksEndpoint:
    """A JWKS document served over HTTP whose keys a test can rotate; counts fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0

        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse(self.document)

        self.app = Starlette(routes=[Route("/jwks.json", jwks)])


@pytest.fixture
def jwks(issuer: TokenIssuer) -> Iterator[tuple[JwksEndpoint, ThreadedServer]]:
    endpoint = JwksEndpoint()
    endpoint.document = issuer.jwks()
    with serve(endpoint.app) as server:
        yield endpoint, server


@pytest.fixture
async def client(
    app_client: AppClient, jwks: tuple[JwksEndpoint, ThreadedServer], issuer: TokenIssuer
) -> AsyncIterator[httpx.AsyncClient]:
    _, server = jwks
    async with app_client(
        auth_mode="jwt", auth_jwks_url=f"{server.url}/jwks.json", auth_issuer=issuer.issuer,
        auth_audience=issuer.audience, auth_jwks_min_refetch_s=0,
    ) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_refused(response: httpx.Response, status: int = 401) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"code", "message", "details"}
    if status == 401:
        assert response.headers["www-authenticate"].startswith('Bearer realm="dicom-gateway"')
        assert body["code"] == "unauthorized"
    return body


async def test_token_signed_by_a_jwks_key_is_accepted(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    response = await client.get("/uid", headers=bearer(issuer.token()))
    assert response.status_code == 200
    assert response.json()["uid"].startswith("2.25.")


async def test_missing_token_is_refused_with_a_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/uid")
    assert_refused(response)
    assert response.headers["www-authenticate"] == 'Bearer realm="dicom-gateway"'  # RFC 6750 §3.1: no error code


async def test_non_bearer_authorization_is_refused(client: httpx.AsyncClient) -> None:
    assert_refused(await client.get("/uid", headers={"Authorization": "Basic dXNlcjpwdw=="}))


async def test_expired_token_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    past = int(time.time()) - 3600
    body = assert_refused(await client.get("/uid", headers=bearer(issuer.token(iat=past - 60, exp=past))))
    assert body["message"] == "the token has expired"


async def test_token_without_expiry_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    token = jwt.encode({"alg": "RS256", "kid": issuer.key.kid}, issuer.claims(exp=None), issuer.key)
    body = assert_refused(await client.get("/uid", headers=bearer(token)))
    assert body["details"] == {"claim": "exp"}


async def test_token_not_yet_valid_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    assert_refused(await client.get("/uid", headers=bearer(issuer.token(nbf=int(time.time()) + 3600))))


async def test_wrong_issuer_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    assert_refused(await client.get("/uid", headers=bearer(issuer.token(iss="https://evil.test"))))


async def test_wrong_audience_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    assert_refused(await client.get("/uid", headers=bearer(issuer.token(aud="another-service"))))


async def test_tampered_payload_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    header, _, signature = issuer.token(roles=["patient"], patient_id="P1").split(".")
    forged = b64url(json.dumps(issuer.claims(roles=["clinician"])).encode())
    body = assert_refused(await client.get("/uid", headers=bearer(f"{header}.{forged}.{signature}")))
    assert body["message"] == "the token's signature is not valid"


async def test_tampered_signature_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    assert_refused(await client.get("/uid", headers=bearer(f"{header}.{payload}.{b64url(bytes(raw))}")))


async def test_alg_none_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(issuer.claims()).encode())
    assert_refused(await client.get("/uid", headers=bearer(f"{header}.{payload}.")))


async def test_hs256_signed_with_the_public_key_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    """The classic key-confusion attack: HMAC over the token with the RSA public key (PEM) as the secret."""
    public_pem = issuer.key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.key.kid}).encode())
    payload = b64url(json.dumps(issuer.claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert_refused(await client.get("/uid", headers=bearer(f"{header}.{payload}.{b64url(signature)}")))


async def test_garbage_tokens_are_refused(client: httpx.AsyncClient) -> None:
    for garbage in ("x", "a.b.c", "....", "ey.ey.ey", "\u00e9t\u00e9.x.y", "e30.e30.", "W10.W10.W10", "a" * 10000):
        header = f"Bearer {garbage}".encode()  # raw bytes: a client may send any octets, UTF-8 included
        assert_refused(await client.get("/uid", headers={b"Authorization": header}))


async def test_valid_token_without_a_known_role_is_forbidden(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    body = assert_refused(await client.get("/uid", headers=bearer(issuer.token(roles=["visitor"]))), 403)
    assert body["code"] == "forbidden"


async def test_patient_role_without_patient_id_grants_nothing(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    assert_refused(await client.get("/uid", headers=bearer(issuer.token(roles=["patient"]))), 403)
    response = await client.get("/uid", headers=bearer(issuer.token(roles=["patient"], patient_id="P1")))
    assert response.status_code == 200


async def test_jwks_key_rotation_needs_no_restart(
    client: httpx.AsyncClient, issuer: TokenIssuer, jwks: tuple[JwksEndpoint, ThreadedServer]
) -> None:
    endpoint, _ = jwks
    assert (await client.get("/uid", headers=bearer(issuer.token()))).status_code == 200
    fetches = endpoint.fetches
    # The identity provider rotates: a new key is published, the old one withdrawn.
    rotated = TokenIssuer(issuer.issuer, issuer.audience)
    endpoint.document = rotated.jwks()
    assert (await client.get("/uid", headers=bearer(rotated.token()))).status_code == 200
    assert endpoint.fetches == fetches + 1  # refetched once, for the unknown kid
    assert (await client.get("/uid", headers=bearer(rotated.token()))).status_code == 200
    assert endpoint.fetches == fetches + 1  # and cached again
    # A token signed by the withdrawn key no longer verifies.
    assert_refused(await client.get("/uid", headers=bearer(issuer.token())))


async def test_roles_from_a_nested_claim(
    app_client: AppClient, jwks: tuple[JwksEndpoint, ThreadedServer], issuer: TokenIssuer
) -> None:
    _, server = jwks
    async with app_client(
        auth_mode="jwt", auth_jwks_url=f"{server.url}/jwks.json", auth_roles_claim="realm_access.roles"
    ) as client:
        token = issuer.token(roles=None, realm_access={"roles": ["offline_access", "clinician"]})
        assert (await client.get("/uid", headers=bearer(token))).status_code == 200
        assert_refused(await client.get("/uid", headers=bearer(issuer.token())), 403)  # top-level roles ignored


async def test_unreachable_jwks_is_503_not_401(app_client: AppClient, issuer: TokenIssuer) -> None:
    async with app_client(auth_mode="jwt", auth_jwks_url="http://127.0.0.1:9/jwks.json") as client:
        response = await client.get("/uid", headers=bearer(issuer.token()))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"


SECRET = "a-shared-secret-of-at-least-32-bytes!"


async def test_hs256_shared_secret(app_client: AppClient) -> None:
    claims = {"sub": "app", "exp": int(time.time()) + 60, "roles": ["clinician"]}
    async with app_client(auth_mode="jwt", auth_jwt_secret=SECRET) as client:
        good = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SECRET))
        assert (await client.get("/uid", headers=bearer(good))).status_code == 200
        wrong = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SECRET + "x"))
        assert_refused(await client.get("/uid", headers=bearer(wrong)))
        # HS512 is not on the default allow-list for a secret (HS256 only).
        other_alg = jwt.encode({"alg": "HS512"}, claims, OctKey.import_key(SECRET), algorithms=["HS512"])
        assert_refused(await client.get("/uid", headers=bearer(other_alg)))


async def test_health_and_metrics_need_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/-/healthz")).status_code == 200
    assert (await client.get("/-/metrics")).status_code == 200
    assert (await client.get("/openapi.yaml")).status_code == 200


async def test_a_remembered_token_still_expires_on_time(
    app_client: AppClient, jwks: tuple[JwksEndpoint, ThreadedServer], issuer: TokenIssuer
) -> None:
    _, server = jwks
    async with app_client(auth_mode="jwt", auth_jwks_url=f"{server.url}/jwks.json", auth_clock_skew_s=0) as client:
        token = issuer.token(exp=int(time.time()) + 2)
        assert (await client.get("/uid", headers=bearer(token))).status_code == 200
        assert (await client.get("/uid", headers=bearer(token))).status_code == 200  # from the cache
        await asyncio.sleep(2.5)
        assert_refused(await client.get("/uid", headers=bearer(token)))


async def test_a_header_joserfc_cannot_handle_is_401_not_500(client: httpx.AsyncClient) -> None:
    for header in ({"alg": "RS256", "crit": 5}, {"alg": "RS256", "crit": [5]}, {"alg": "RS256", "crit": [{}]}):
        token = f"{b64url(json.dumps(header).encode())}.e30.AA"
        assert_refused(await client.get("/uid", headers=bearer(token)))
