"""Fixtures: a real Orthanc for the session, the real app built by `create_app`, and signing keys for tokens."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.settings import Settings, load_settings
from tests.support.orthanc import Orthanc
from tests.support.postgres import Postgres
from tests.support.recorder import RecordingProxy
from tests.support.rsyslog import Rsyslog
from tests.support.servers import serve

REPO_ROOT = Path(__file__).resolve().parents[1]

# Apps built by the tests store callback events in one SQLite file of this test run (not ./data of the checkout),
# unless a test names its own DATABASE_URL; `dicom-gateway serve` subprocesses inherit it through gateway_env.
_TEST_DATA = Path(tempfile.mkdtemp(prefix="dicom-gateway-tests-"))
atexit.register(shutil.rmtree, _TEST_DATA, ignore_errors=True)
os.environ["DATABASE_URL"] = f"sqlite:///{_TEST_DATA / 'gateway.db'}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--image", metavar="REF", default=None,
                     help="the built container image that tests/image/ runs (`make image-test`); without it, "
                          "tests/image/ is not collected")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/image/ needs a built image and podman: only `make image-test` (which passes --image) runs it."""
    if collection_path == Path(__file__).parent / "image" and config.getoption("--image") is None:
        return True
    return None


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """The session's Orthanc, on free ports, stopped (and waited for) at the end of the run."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def orthanc_url(orthanc: Orthanc) -> str:
    return orthanc.dicomweb_url


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL, on a free port, stopped (and waited for) at the end of the run.

    Its directory is a fresh one under /tmp, not under pytest's temporary root: pytest resets that root's mode to
    0700 whenever another pytest session starts, which would lock the `postgres` user out mid-run.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="dicom-gateway-pg-"))
    server = Postgres(run_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    """A fresh, empty database of the session's PostgreSQL."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: each test that takes it runs twice, on a SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def samples_loaded(orthanc: Orthanc) -> str:
    """The session's Orthanc with the `make run` sample exams (pydicom's bundled files) stored in it."""
    subprocess.run([sys.executable, str(REPO_ROOT / "deploy" / "dev" / "load_samples.py"), orthanc.dicomweb_url],
                   check=True, capture_output=True, timeout=60)
    return orthanc.dicomweb_url


@pytest.fixture
def recorder(orthanc: Orthanc) -> Iterator[tuple[RecordingProxy, str]]:
    """A recording proxy in front of the session's Orthanc; yields it and the DICOMweb URL to give the gateway."""
    proxy = RecordingProxy(orthanc.url)
    with serve(proxy) as server:
        yield proxy, f"{server.url}/dicom-web"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"pacs_service_url": "http://127.0.0.1:9/dicom-web", "auth_mode": "none"}
    values.update(overrides)
    return load_settings(**values)


AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client that talks to it in-process (the real ASGI stack)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client


@pytest.fixture
def app_client() -> AppClient:
    """`async with app_client(**settings) as client:` — the real app with these settings, lifespan running."""

    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with running(create_app(make_settings(**overrides))) as client:
            yield client

    return build


class TokenIssuer:
    """Signs JWTs the way an identity provider would: RS256 with a key published in a JWKS."""

    def __init__(self, issuer: str = "https://idp.test", audience: str = "dicom-gateway") -> None:
        self.issuer = issuer
        self.audience = audience
        self.key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex, "use": "sig", "alg": "RS256"})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "sub": "user-1", "iat": now, "exp": now + 300,
            "roles": ["clinician"],
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **overrides: Any) -> str:
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, self.claims(**overrides), self.key)


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer()


def gateway_env(**settings: str) -> dict[str, str]:
    """Environment for a `dicom-gateway serve` subprocess: this process's, without any inherited gateway settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PACS_", "AUTH_", "DICOM_", "LOG_", "CALLBACK_", "NEW_EXAM_", "AUDIT_"))}
    env.update({k.upper(): v for k, v in settings.items()})
    return env


@pytest.fixture
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    """A private rsyslogd on a free loopback port (plain TCP, octet counting): the audit record repository.

    One per test (it starts in about 0.1 s), so that a test may stop, kill and restart it; `Rsyslog.wait_for` reads
    back what it wrote.
    """
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
