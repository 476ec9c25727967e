"""Viewer tokens: short-lived JWTs, signed by the gateway, that open one study through `/dicomweb` and nothing else.

A token carries the study (`study`), its patient (`patient`), the user it was made for (`sub`), a role
(`patient`: read-only; `diagnostic`: may also store into the study), `exp` and a unique `jti`. It is signed with
`VIEWER_TOKEN_SECRET` (HS256) or the private key `VIEWER_TOKEN_KEY` (RS256, ES256 or Ed25519, by key type); without
either, with a random key made at start (tokens then die with the process, and replicas cannot read each other's:
fine for development only). Its header names the key (`kid`), which is how `/dicomweb` tells viewer tokens from the
gateway's inbound JWTs.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, JoseError
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey
from joserfc.jws import extract_compact

from gateway.errors import Unauthorized

AUDIENCE = "dicom-gateway-viewer"
ISSUER = "dicom-gateway"


class ViewerRole(StrEnum):
    PATIENT = "patient"  # read-only
    DIAGNOSTIC = "diagnostic"  # may also store into the study


@dataclass(frozen=True, slots=True)
class ViewerGrant:
    study: str
    patient: str
    user: str
    role: ViewerRole
    expires_at: int


class ViewerTokens:
    def __init__(self, *, secret: str | None, key_pem: str | None, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        key: Key
        if key_pem:
            text = Path(key_pem).read_text() if not key_pem.lstrip().startswith("-----") else key_pem
            key, self.algorithm = _private_key(text)
        else:
            key = OctKey.import_key(secret.encode() if secret else secrets.token_bytes(32))
            self.algorithm = "HS256"
        self._key = key
        self.kid = f"viewer-{key.thumbprint()[:16]}"
        self._claims = jwt.JWTClaimsRegistry(
            leeway=5, iss={"essential": True, "value": ISSUER}, aud={"essential": True, "value": AUDIENCE},
            exp={"essential": True}, study={"essential": True}, patient={"essential": True},
            role={"essential": True}, jti={"essential": True},
        )

    def issue(self, *, study: str, patient: str, user: str, role: ViewerRole) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "study": study, "patient": patient,
                  "role": role.value, "iat": now, "exp": now + self.ttl_s, "jti": secrets.token_urlsafe(16)}
        return jwt.encode({"alg": self.algorithm, "kid": self.kid, "typ": "JWT"}, claims, self._key,
                          algorithms=[self.algorithm])

    def is_viewer_token(self, raw: str) -> bool:
        """Whether `raw` claims to be one of ours (its header names our key); verified by `verify`."""
        try:
            header = extract_compact(raw.encode()).headers()
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            return False
        return isinstance(header, dict) and header.get("kid") == self.kid

    def verify(self, raw: str) -> ViewerGrant:
        try:
            token = jwt.decode(raw, self._key, algorithms=[self.algorithm])
            self._claims.validate(token.claims)
            claims: dict[str, Any] = dict(token.claims)
            grant = ViewerGrant(str(claims["study"]), str(claims["patient"]), str(claims.get("sub", "")),
                                ViewerRole(claims["role"]), int(claims["exp"]))
        except ExpiredTokenError:
            raise Unauthorized("the viewer token has expired") from None
        except BadSignatureError:
            raise Unauthorized("the viewer token's signature is not valid") from None
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            raise Unauthorized("the viewer token is not valid") from None
        return grant


def _private_key(pem: str) -> tuple[Key, str]:
    """A PEM private key and the algorithm for its type: RSA → RS256, EC P-256 → ES256, Ed25519 → Ed25519 (RFC 9864)."""
    for kind, algorithm in ((RSAKey, "RS256"), (ECKey, "ES256"), (OKPKey, "Ed25519")):
        try:
            key: Key = kind.import_key(pem)
        except (ValueError, TypeError, JoseError):
            continue
        if not key.is_private:
            raise ValueError("VIEWER_TOKEN_KEY must be a private key")
        return key, algorithm
    raise ValueError("VIEWER_TOKEN_KEY is not an RSA, EC or Ed25519 private key in PEM")
