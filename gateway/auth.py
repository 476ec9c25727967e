"""Inbound authentication: who is calling, as one typed `Caller`, and the guard that routes are wrapped in.

`AUTH_MODE=jwt` verifies bearer JWTs (RFC 7519) with joserfc, the JOSE library of the Authlib project (Authlib's
own `authlib.jose` is deprecated in its favour). Keys come from a JWKS URL (fetched asynchronously, cached,
refetched when a token names an unknown `kid`, so key rotation needs no restart) or from a shared HS256 secret.
Only the algorithms on the allow-list are accepted, never `none`, and never a symmetric algorithm with JWKS keys
(which would let anyone sign with the public key). `exp` is required; `exp`/`nbf`/`iat` are checked with a small
clock-skew leeway; `iss` and `aud` are checked when configured.

`AUTH_MODE=none` (development only) treats every caller as a clinician with the `pacs` role.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx
import structlog
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet, OctKey
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized
from gateway.settings import AuthMode, Settings

log = structlog.get_logger(__name__)


class Role(StrEnum):
    CLINICIAN = "clinician"  # any patient's data
    PATIENT = "patient"  # only the patient named in the token
    PACS = "pacs"  # may post new-exam callbacks


_ROLE_NAMES = frozenset(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str
    roles: frozenset[Role]
    # Set exactly when the caller has the patient role: the one patient whose data it may touch.
    patient_id: str | None = None

    def has_any(self, roles: Iterable[Role]) -> bool:
        return not self.roles.isdisjoint(roles)


class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Caller: ...

    async def aclose(self) -> None: ...


Handler = Callable[[Request, Caller], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(authenticator: Authenticator, roles: Iterable[Role], handler: Handler) -> Endpoint:
    """Wrap `handler` so it runs only for an authenticated caller holding one of `roles` (401 / 403 otherwise)."""
    allowed = frozenset(roles)

    async def endpoint(request: Request) -> Response:
        caller = await authenticator.authenticate(request)
        if not caller.has_any(allowed):
            raise Forbidden(
                "the token does not grant access to this resource",
                {"required_roles": sorted(allowed)},
            )
        return await handler(request, caller)

    return endpoint


class NoAuthentication:
    """Development mode: no token needed; everyone is a clinician and a PACS."""

    async def authenticate(self, request: Request) -> Caller:
        return Caller(subject="anonymous", roles=frozenset({Role.CLINICIAN, Role.PACS}))

    async def aclose(self) -> None:
        return None


class JwksKeys:
    """A JWKS fetched over HTTP, cached for `cache_s`, refetched (at most every `min_refetch_s`) on unknown kids."""

    def __init__(self, url: str, cache_s: float, min_refetch_s: float, client: httpx.AsyncClient) -> None:
        self._url = url
        self._cache_s = cache_s
        self._min_refetch_s = min_refetch_s
        self._client = client
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self.generation = 0
        self._lock = asyncio.Lock()

    async def current(self) -> KeySet:
        if self._keys is None or time.monotonic() - self._fetched_at > self._cache_s:
            await self._refresh(stale_ok=True)
        assert self._keys is not None
        return self._keys

    async def refetch_for_unknown_kid(self) -> bool:
        """Refetch because a token named a kid we do not know (a rotation); False when rate-limited."""
        if time.monotonic() - self._fetched_at < self._min_refetch_s:
            return False
        await self._refresh(stale_ok=False)
        return True

    async def _refresh(self, *, stale_ok: bool) -> None:
        started = self._fetched_at
        async with self._lock:
            if self._fetched_at != started:  # another request refreshed while we waited
                return
            try:
                response = await self._client.get(self._url, headers={"Accept": "application/json"})
                response.raise_for_status()
                keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
                log.warning("jwks_fetch_failed", reason=type(exc).__name__)
                if self._keys is not None and stale_ok:
                    return  # keep verifying with the keys we have rather than lock everyone out
                raise ServiceUnavailable("the gateway cannot fetch the keys that verify tokens") from None
            if self._keys is None or keys.as_dict() != self._keys.as_dict():
                self.generation += 1  # verifications made with the old keys no longer count
            self._keys = keys
            self._fetched_at = time.monotonic()
            log.info("jwks_fetched", keys=len(keys.keys))


# A verified token is remembered (its signature and claims are not checked again) for at most this long, never past
# its `exp`, and never across a change of the JWKS keys. Apps send the same token with every request; verifying it
# once per minute instead of every time saves ~10 % of the gateway's CPU per proxied request.
VERIFIED_CACHE_S = 60.0
VERIFIED_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class _VerifiedToken:
    caller: Caller
    valid_until: float  # epoch seconds
    generation: int


class JwtAuthenticator:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        self._roles_path = settings.auth_roles_claim.split(".")
        self._patient_claim = settings.auth_patient_id_claim
        claims: dict[str, Any] = {"exp": {"essential": True}}
        if settings.auth_issuer:
            claims["iss"] = {"essential": True, "value": settings.auth_issuer}
        if settings.auth_audience:
            claims["aud"] = {"essential": True, "value": settings.auth_audience}
        self._claims = jwt.JWTClaimsRegistry(leeway=settings.auth_clock_skew_s, **claims)
        self._client: httpx.AsyncClient | None = None
        self._jwks: JwksKeys | None = None
        self._verified: dict[str, _VerifiedToken] = {}
        self._secret: OctKey | None = None
        if settings.auth_jwt_secret is not None:
            self._secret = OctKey.import_key(settings.auth_jwt_secret.get_secret_value())
        elif settings.auth_jwks_url is not None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0), transport=transport)
            self._jwks = JwksKeys(
                str(settings.auth_jwks_url), settings.auth_jwks_cache_s, settings.auth_jwks_min_refetch_s,
                self._client,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def authenticate(self, request: Request) -> Caller:
        raw = _bearer_token(request)
        cached = self._verified.get(raw)
        now = time.time()
        generation = self._jwks.generation if self._jwks is not None else 0
        if cached is not None and cached.valid_until > now and cached.generation == generation:
            return cached.caller
        claims = await self._verify(raw)
        caller = self._caller(claims)
        self._remember(raw, _VerifiedToken(caller, min(float(claims["exp"]), now + VERIFIED_CACHE_S), generation))
        return caller

    def _remember(self, raw: str, verified: _VerifiedToken) -> None:
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[raw] = verified

    async def _verify(self, raw: str) -> dict[str, Any]:
        try:
            token = await self._decode(raw)
            self._claims.validate(token.claims)
        except ExpiredTokenError:
            raise Unauthorized("the token has expired") from None
        except MissingClaimError as exc:
            raise Unauthorized("the token lacks a required claim", {"claim": exc.claim}) from None
        except BadSignatureError:
            raise Unauthorized("the token's signature is not valid") from None
        except JoseError as exc:
            # Unknown kid, algorithm not allowed, malformed token, wrong issuer or audience, not yet valid, ...
            raise Unauthorized("the token is not valid", {"reason": exc.error}) from None
        except (ValueError, TypeError, KeyError, AttributeError):
            # Undecodable base64 or JSON, or a header joserfc trips over (e.g. `"crit": 5`) before checking the
            # signature: all malformed tokens, never a crash.
            raise Unauthorized("the token is not valid", {"reason": "malformed"}) from None
        return dict(token.claims)

    async def _decode(self, raw: str) -> jwt.Token:
        if self._secret is not None:
            return jwt.decode(raw, self._secret, algorithms=self._algorithms)
        assert self._jwks is not None
        try:
            return jwt.decode(raw, await self._jwks.current(), algorithms=self._algorithms)
        except InvalidKeyIdError:
            if not await self._jwks.refetch_for_unknown_kid():
                raise
            return jwt.decode(raw, await self._jwks.current(), algorithms=self._algorithms)

    def _caller(self, claims: dict[str, Any]) -> Caller:
        value: Any = claims
        for part in self._roles_path:  # a dotted path reaches nested claims, e.g. Keycloak's realm_access.roles
            value = value.get(part) if isinstance(value, dict) else None
        names = value.replace(",", " ").split() if isinstance(value, str) else value
        roles = {Role(n) for n in names if n in _ROLE_NAMES} if isinstance(names, list) else set()
        patient = claims.get(self._patient_claim)
        patient_id = patient if isinstance(patient, str) and patient.strip() else None
        if Role.PATIENT in roles and patient_id is None:
            # A patient token that does not say which patient grants nothing patient-scoped.
            roles.discard(Role.PATIENT)
        sub = claims.get("sub")
        return Caller(
            subject=sub if isinstance(sub, str) else "unknown",
            roles=frozenset(roles),
            patient_id=patient_id if Role.PATIENT in roles else None,
        )


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("a bearer token is required", error="")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", error="invalid_request")
    return value.strip()


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth_mode is AuthMode.NONE:
        return NoAuthentication()
    return JwtAuthenticator(settings)
