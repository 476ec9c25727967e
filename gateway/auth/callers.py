"""Inbound authentication: who is calling, as one typed `Caller`, and the guard that routes are wrapped in.

`AUTH_MODE=jwt` verifies bearer JWTs (RFC 7519) with joserfc, the JOSE library of the Authlib project (Authlib's
own `authlib.jose` is deprecated in its favour). Keys come from a JWKS URL (fetched asynchronously, cached,
refetched when a token names an unknown `kid`, so key rotation needs no restart) or from a shared HS256 secret.
Only the algorithms on the allow-list are accepted, never `none`, and never a symmetric algorithm with JWKS keys
(which would let anyone sign with the public key). `exp` is required; `exp`/`nbf`/`iat` are checked with a small
clock-skew leeway; `iss` and `aud` are checked when configured.

`AUTH_MODE=none` (development only) treats every caller as a clinician with the `pacs` and `auditor` roles.
"""

from __future__ import annotations

import asyncio
import math
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

from gateway.audit.facts import note_actor, note_patient
from gateway.audit.records import Actor
from gateway.errors import Forbidden, ServiceUnavailable, Unauthorized

log = structlog.get_logger(__name__)


class Role(StrEnum):
    CLINICIAN = "clinician"  # any patient's data
    PATIENT = "patient"  # only the patient named in the token
    PACS = "pacs"  # may post new-exam callbacks
    AUDITOR = "auditor"  # may read the audit trail (GET /audit-events), and nothing else


_ROLE_NAMES = frozenset(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class Caller:
    subject: str
    roles: frozenset[Role]
    # Set exactly when the caller has the patient role: the one patient whose data it may touch.
    patient_id: str | None = None
    issuer: str | None = None  # the token's `iss`, for the audit record

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
        note_caller(caller, request)
        if not caller.has_any(allowed):
            raise Forbidden(
                "the token does not grant access to this resource",
                {"required_roles": sorted(allowed)},
            )
        return await handler(request, caller)

    return endpoint


def note_caller(caller: Caller, request: Request) -> None:
    """The caller, for the request's audit record (a no-op when the request is not audited)."""
    note_actor(Actor(subject=caller.subject, roles=tuple(sorted(caller.roles)), issuer=caller.issuer,
                     address=request.client.host if request.client else None))
    if caller.patient_id is not None:
        note_patient(caller.patient_id)


class NoAuthentication:
    """Development mode: no token needed; everyone is a clinician, a PACS and an auditor (docs/decisions.md)."""

    async def authenticate(self, request: Request) -> Caller:
        return Caller(subject="anonymous", roles=frozenset({Role.CLINICIAN, Role.PACS, Role.AUDITOR}))

    async def aclose(self) -> None:
        return None


# After a failed JWKS fetch the next waits this long, doubling with each further failure up to the maximum (and never
# less than AUTH_JWKS_MIN_REFETCH_S): a down identity provider costs one fetch per period, not one per token.
JWKS_BACKOFF_S = 1.0
JWKS_MAX_BACKOFF_S = 60.0


class JwksKeys:
    """A JWKS fetched over HTTP, cached for `cache_s`, refetched on unknown kids; every fetch, failed or not, counts.

    At most one fetch is in flight; requests that waited for it share its outcome. After a success, the next fetch
    for an unknown kid waits `min_refetch_s`; after a failure, the next fetch of any kind waits for the backoff, and
    until then a request that needs the IdP is answered 503 (with Retry-After) at once, while tokens signed by keys
    already held keep verifying.
    """

    def __init__(self, *, url: str, cache_s: float, min_refetch_s: float, client: httpx.AsyncClient,
                 backoff_s: float = JWKS_BACKOFF_S, max_backoff_s: float = JWKS_MAX_BACKOFF_S) -> None:
        self._url = url
        self._cache_s = cache_s
        self._min_refetch_s = min_refetch_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._client = client
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")  # the last successful fetch
        self._next_fetch_at = float("-inf")  # no fetch before this (monotonic seconds)
        self._failures = 0  # failed fetches since the last success
        self._attempts = 0
        self.generation = 0
        self._lock = asyncio.Lock()

    async def current(self) -> KeySet:
        if self._keys is None or time.monotonic() - self._fetched_at > self._cache_s:
            await self._refresh(stale_ok=True)
        assert self._keys is not None
        return self._keys

    async def refetch_for_unknown_kid(self) -> bool:
        """Refetch because a token named a kid we do not know (a rotation); False when rate-limited."""
        if self._failures == 0 and time.monotonic() < self._next_fetch_at:
            return False
        await self._refresh(stale_ok=False)
        return True

    async def _refresh(self, *, stale_ok: bool) -> None:
        attempts = self._attempts
        async with self._lock:
            # Fetch unless another request did while we waited (then its outcome is ours) or we are backing off.
            if self._attempts == attempts and not (self._failures and time.monotonic() < self._next_fetch_at):
                await self._fetch()
                self._attempts += 1  # after the fetch: requests that waited for this one see that it happened
            if self._failures and not (stale_ok and self._keys is not None):
                # Keep verifying with the keys we have rather than lock everyone out; without them, 503.
                retry_after = max(1, math.ceil(self._next_fetch_at - time.monotonic()))
                raise ServiceUnavailable("the gateway cannot fetch the keys that verify tokens",
                                         {"retry_after_s": retry_after}, headers={"Retry-After": str(retry_after)})

    async def _fetch(self) -> None:
        try:
            response = await self._client.get(self._url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
            self._failures += 1
            backoff = min(self._backoff_s * 2 ** (self._failures - 1), self._max_backoff_s)
            self._next_fetch_at = time.monotonic() + max(backoff, self._min_refetch_s)
            log.warning("jwks_fetch_failed", reason=type(exc).__name__, failures=self._failures,
                        retry_in_s=round(self._next_fetch_at - time.monotonic(), 1))
            return
        if self._keys is None or keys.as_dict() != self._keys.as_dict():
            self.generation += 1  # verifications made with the old keys no longer count
        self._keys = keys
        self._failures = 0
        self._fetched_at = time.monotonic()
        self._next_fetch_at = self._fetched_at + self._min_refetch_s
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


@dataclass(frozen=True, slots=True)
class TokenRules:
    """What a gateway JWT must be to be accepted (the `AUTH_*` and `JWT_ALGORITHMS` settings)."""

    algorithms: tuple[str, ...]
    roles_claim: str  # a dotted path into the claims, e.g. "realm_access.roles"
    patient_claim: str
    issuer: str | None
    audience: str | None
    clock_skew_s: int


@dataclass(frozen=True, slots=True)
class JwksSource:
    """Where the IdP's signing keys are fetched from, and how often (`AUTH_JWKS_*`)."""

    url: str
    cache_s: float
    min_refetch_s: float


class JwtAuthenticator:
    """Verifies the gateway's JWTs: signed with one shared secret, or by a key of the IdP's JWKS."""

    def __init__(self, *, rules: TokenRules, secret: str | None = None, jwks: JwksSource | None = None) -> None:
        self._algorithms = list(rules.algorithms)
        self._roles_path = rules.roles_claim.split(".")
        self._patient_claim = rules.patient_claim
        claims: dict[str, Any] = {"exp": {"essential": True}}
        if rules.issuer:
            claims["iss"] = {"essential": True, "value": rules.issuer}
        if rules.audience:
            claims["aud"] = {"essential": True, "value": rules.audience}
        self._claims = jwt.JWTClaimsRegistry(leeway=rules.clock_skew_s, **claims)
        self._client: httpx.AsyncClient | None = None
        self._jwks: JwksKeys | None = None
        self._verified: dict[str, _VerifiedToken] = {}
        self._secret: OctKey | None = None
        if secret is not None:
            self._secret = OctKey.import_key(secret)
        elif jwks is not None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
            self._jwks = JwksKeys(url=jwks.url, cache_s=jwks.cache_s, min_refetch_s=jwks.min_refetch_s,
                                  client=self._client)

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
        roles = _roles(claims, self._roles_path)
        patient_id = None
        if Role.PATIENT in roles:
            patient = claims.get(self._patient_claim)
            if patient is None:
                # A patient token that does not say which patient grants nothing patient-scoped.
                roles.discard(Role.PATIENT)
            else:
                patient_id = _patient_scope(patient, self._patient_claim)
        sub, iss = claims.get("sub"), claims.get("iss")
        return Caller(subject=sub if isinstance(sub, str) else "unknown", roles=frozenset(roles),
                      patient_id=patient_id,
                      issuer=iss if isinstance(iss, str) else None)


def _roles(claims: dict[str, Any], path: list[str]) -> set[Role]:
    """The gateway's roles named by the roles claim: absent, a string ("a b" or "a,b") or a list of strings."""
    value: Any = claims
    for part in path:  # a dotted path reaches nested claims, e.g. Keycloak's realm_access.roles
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return set()
    names = value.replace(",", " ").split() if isinstance(value, str) else value
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise Forbidden("the token's roles claim must be a string or a list of strings", {"claim": ".".join(path)})
    return {Role(name) for name in names if name in _ROLE_NAMES}


# Characters a PACS reads as more than one value: `*` and `?` are wildcards (PS3.4 §C.2.2.2.4), `\` separates the
# values of a list (PS3.5 §6.4, PS3.4 §C.2.2.2.2) and `,` those of a QIDO-RS query parameter (PS3.18 §8.3.4.1).
_MATCHING_CHARACTERS = frozenset("*?\\,")


def _patient_scope(value: Any, claim: str) -> str:
    """The patient a patient token is scoped to: a value with one reading when matched against PatientID.

    A string of 1-64 characters (the LO of PatientID, PS3.5 Table 6.2-1), all printable (no control, format or
    separator character: no NUL, no ESC, no bidirectional override), no leading or trailing space, and none of
    `* ? \\ ,`. Anything else is 403 naming the claim: it is never guessed at, trimmed or escaped.
    """
    if not isinstance(value, str):
        problem = "must be a string"
    elif not 1 <= len(value) <= 64:
        problem = "must be 1-64 characters"
    elif not value.isprintable():
        problem = "must be printable characters only"
    elif value != value.strip(" "):
        problem = "must not start or end with a space"
    elif not _MATCHING_CHARACTERS.isdisjoint(value):
        problem = "must not hold the matching characters * ? \\ ,"
    else:
        return value
    raise Forbidden(f"the token's patient claim {problem}", {"claim": claim})


def bearer_credentials(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1), stripped (maybe empty); None for
    another scheme or no credentials part."""
    scheme, space, value = header.partition(" ")
    return value.strip() if space and scheme.lower() == "bearer" else None


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("a bearer token is required", error="")
    value = bearer_credentials(header)
    if not value:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'", error="invalid_request")
    return value
