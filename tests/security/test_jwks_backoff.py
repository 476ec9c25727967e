"""The identity provider's key endpoint failing (issue 10, class 8): bounded fetches, 503 answers, recovery.

A real JWKS endpoint on loopback counts the fetches it receives; it answers 500 while "down". A flood of tokens
naming unknown `kid`s must not turn into a fetch per token: failed fetches count towards the refetch limit, the
gateway backs off, and answers 503 (with Retry-After) without calling out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import AppClient, TokenIssuer
from tests.support.servers import ThreadedServer, serve

FLOOD = 200


class FlakyJwks:
    """A JWKS endpoint that serves `document`, or answers 500 while `down`; counts every fetch."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.down = False
        self.fetches = 0

        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            if self.down:
                return JSONResponse({"error": "temporarily unavailable"}, status_code=500)
            return JSONResponse(self.document)

        self.app = Starlette(routes=[Route("/jwks.json", jwks)])


@pytest.fixture
def idp(issuer: TokenIssuer) -> Iterator[tuple[FlakyJwks, ThreadedServer]]:
    endpoint = FlakyJwks(issuer.jwks())
    with serve(endpoint.app) as server:
        yield endpoint, server


def unknown_kid_token(issuer: TokenIssuer, n: int) -> str:
    """A token whose header names a key the IdP never published (signed with the issuer's key, so cheap to make)."""
    return jwt.encode({"alg": "RS256", "kid": f"unknown-{n}"}, issuer.claims(sub=f"flood-{n}"), issuer.key)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unavailable(answers: list[httpx.Response]) -> None:
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "service_unavailable"


def retry_after(answers: list[httpx.Response]) -> float:
    """The longest wait the 503s asked for (each names one)."""
    waits = [float(answer.headers["retry-after"]) for answer in answers]
    assert min(waits) >= 1
    return max(waits)


async def test_a_flood_of_unknown_kids_while_the_jwks_fails_is_503_with_bounded_fetches_and_recovers(
    app_client: AppClient, idp: tuple[FlakyJwks, ThreadedServer], issuer: TokenIssuer
) -> None:
    endpoint, server = idp
    async with app_client(auth_mode="jwt", auth_jwks_url=f"{server.url}/jwks.json", auth_issuer=issuer.issuer,
                          auth_audience=issuer.audience, auth_jwks_min_refetch_s=1) as client:
        assert (await client.get("/uid", headers=bearer(issuer.token()))).status_code == 200
        assert endpoint.fetches == 1
        await asyncio.sleep(1.1)  # past the refetch limit: an unknown kid may now ask the IdP again
        endpoint.down = True

        started = time.monotonic()
        flood = list(await asyncio.gather(*(client.get("/uid", headers=bearer(unknown_kid_token(issuer, n)))
                                            for n in range(FLOOD))))
        for n in range(FLOOD, 2 * FLOOD):  # and one after the other
            flood.append(await client.get("/uid", headers=bearer(unknown_kid_token(issuer, n))))
        elapsed = time.monotonic() - started
        # One fetch for the flood, then at most one per backoff period (at least 1 s, doubling).
        assert 2 <= endpoint.fetches <= 2 + int(elapsed), (endpoint.fetches, elapsed)
        assert_unavailable(flood)
        wait = retry_after(flood)

        # Tokens signed by a key the gateway already has keep working while the IdP is down.
        assert (await client.get("/uid", headers=bearer(issuer.token()))).status_code == 200

        # The IdP comes back, having rotated to a new key: after the backoff, that key is fetched and accepted.
        rotated = TokenIssuer(issuer.issuer, issuer.audience)
        endpoint.document = {"keys": [*issuer.jwks()["keys"], *rotated.jwks()["keys"]]}
        endpoint.down = False
        before = endpoint.fetches
        await asyncio.sleep(wait + 0.2)
        assert (await client.get("/uid", headers=bearer(rotated.token()))).status_code == 200
        assert endpoint.fetches == before + 1
        # Back to normal: unknown kids are 401 again, and the refetch limit holds (no fetch within 1 s).
        answer = await client.get("/uid", headers=bearer(unknown_kid_token(issuer, 0)))
        assert answer.status_code == 401
        assert endpoint.fetches == before + 1


async def test_a_cold_start_with_the_jwks_down_is_503_with_bounded_fetches_and_recovers(
    app_client: AppClient, idp: tuple[FlakyJwks, ThreadedServer], issuer: TokenIssuer
) -> None:
    endpoint, server = idp
    endpoint.down = True
    async with app_client(auth_mode="jwt", auth_jwks_url=f"{server.url}/jwks.json",
                          auth_jwks_min_refetch_s=0) as client:
        started = time.monotonic()
        flood = list(await asyncio.gather(*(client.get("/uid", headers=bearer(issuer.token(sub=f"user-{n}")))
                                            for n in range(FLOOD))))
        for n in range(FLOOD):
            flood.append(await client.get("/uid", headers=bearer(unknown_kid_token(issuer, n))))
        elapsed = time.monotonic() - started
        assert 1 <= endpoint.fetches <= 1 + int(elapsed), (endpoint.fetches, elapsed)
        assert_unavailable(flood)
        wait = retry_after(flood)

        endpoint.down = False
        before = endpoint.fetches
        await asyncio.sleep(wait + 0.2)
        assert (await client.get("/uid", headers=bearer(issuer.token()))).status_code == 200
        assert endpoint.fetches == before + 1
