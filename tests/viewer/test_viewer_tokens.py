"""Viewer tokens on their own: every key type signs and verifies, and nothing else verifies."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.jwk import OctKey

from gateway.errors import Unauthorized
from gateway.viewer.tokens import ViewerRole, ViewerTokens


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.mark.parametrize(("make", "algorithm"), [
    (lambda: pem(rsa.generate_private_key(65537, 2048)), "RS256"),
    (lambda: pem(ec.generate_private_key(ec.SECP256R1())), "ES256"),
    (lambda: pem(ed25519.Ed25519PrivateKey.generate()), "Ed25519"),
])
def test_private_keys_sign_and_verify(make: Callable[[], str], algorithm: str) -> None:
    key = make()
    tokens = ViewerTokens(secret=None, key_pem=key, ttl_s=60)
    assert tokens.algorithm == algorithm
    raw = tokens.issue(study="1.2.3", patient="P1", user="dr", role=ViewerRole.DIAGNOSTIC)
    grant = tokens.verify(raw)
    assert (grant.study, grant.patient, grant.user, grant.role) == ("1.2.3", "P1", "dr", ViewerRole.DIAGNOSTIC)
    assert grant.expires_at - time.time() <= 60
    other = ViewerTokens(secret=None, key_pem=make(), ttl_s=60)
    assert not other.is_viewer_token(raw)  # another key, another kid
    with pytest.raises(Unauthorized):
        other.verify(raw)


def test_a_key_file_path_works_and_a_public_key_is_refused(tmp_path: Path) -> None:
    private = rsa.generate_private_key(65537, 2048)
    path = tmp_path / "viewer.pem"
    path.write_text(pem(private))
    assert ViewerTokens(secret=None, key_pem=str(path), ttl_s=60).algorithm == "RS256"
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ValueError, match="private key"):
        ViewerTokens(secret=None, key_pem=public, ttl_s=60)


def test_each_token_is_unique_and_expires() -> None:
    tokens = ViewerTokens(secret="s" * 32, key_pem=None, ttl_s=60)
    a = tokens.issue(study="1.2.3", patient="P", user="u", role=ViewerRole.PATIENT)
    b = tokens.issue(study="1.2.3", patient="P", user="u", role=ViewerRole.PATIENT)
    assert a != b  # a unique jti each time
    expired = jwt.encode({"alg": "HS256", "kid": tokens.kid},
                         {"iss": "dicom-gateway", "aud": "dicom-gateway-viewer", "study": "1.2.3", "patient": "P",
                          "role": "patient", "jti": "x", "exp": int(time.time()) - 60},
                         OctKey.import_key(b"s" * 32))
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(expired)
    wrong_audience = jwt.encode({"alg": "HS256", "kid": tokens.kid},
                                {"iss": "dicom-gateway", "aud": "someone-else", "study": "1.2.3", "patient": "P",
                                 "role": "patient", "jti": "x", "exp": int(time.time()) + 60},
                                OctKey.import_key(b"s" * 32))
    with pytest.raises(Unauthorized):
        tokens.verify(wrong_audience)
    assert not tokens.is_viewer_token("not.a.token")
    assert not tokens.is_viewer_token("")


def test_without_a_secret_a_random_key_is_made() -> None:
    one, two = ViewerTokens(secret=None, key_pem=None, ttl_s=60), ViewerTokens(secret=None, key_pem=None, ttl_s=60)
    raw = one.issue(study="1.2.3", patient="P", user="u", role=ViewerRole.PATIENT)
    assert one.verify(raw).study == "1.2.3"
    assert not two.is_viewer_token(raw)
