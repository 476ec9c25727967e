"""The built image in front of the test Orthanc, run as the Kubernetes manifests run it (`make image-test`).

The container gets what the manifests give it: a read-only root, the manifests' user, no capabilities, no privilege
escalation, a tmpfs at /tmp and a volume at /data. Its settings are config/orthanc.env's, with only what must point
at this machine replaced (the PACS's address and password, the JWKS, the subscriber, the secrets). It shares the
host's network (`--network host`), so it listens on the host's port 8080, which must be free.
"""

from __future__ import annotations

import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import REPO_ROOT, TokenIssuer
from tests.support.container import Container, create_volume, podman, remove_leftovers
from tests.support.deployment import gateway_container, listens_on, pod
from tests.support.orthanc import Orthanc
from tests.support.receivers import Receiver, receivers
from tests.support.servers import ThreadedServer, serve

ORTHANC_ENV = REPO_ROOT / "config" / "orthanc.env"
PORT = 8080
CONTAINER_TMP = "/tmp"  # noqa: S108 (the container's own /tmp, a tmpfs as the manifests' emptyDir)


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (what `podman run --env-file` reads); comment lines and blank lines left out."""
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture(scope="session")
def image(pytestconfig: pytest.Config) -> str:
    reference = pytestconfig.getoption("--image")
    assert isinstance(reference, str)
    remove_leftovers()
    return reference


@pytest.fixture(scope="module")
def settings() -> dict[str, str]:
    return env_file(ORTHANC_ENV)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, settings: dict[str, str]) -> Iterator[Orthanc]:
    """An Orthanc of its own, with the user config/orthanc.env names and a password made here."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), credentials=(settings["PACS_USERNAME"],
                                                                      secrets.token_urlsafe(16)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def identity(settings: dict[str, str]) -> Iterator[tuple[TokenIssuer, ThreadedServer]]:
    """The identity provider of config/orthanc.env (its issuer, its audience), with its JWKS on loopback."""
    issuer = TokenIssuer(issuer=settings["AUTH_ISSUER"], audience=settings["AUTH_AUDIENCE"])

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(issuer.jwks())

    with serve(Starlette(routes=[Route("/certs", jwks)])) as server:
        yield issuer, server


@pytest.fixture(scope="module")
def subscriber() -> Iterator[Receiver]:
    with receivers(Receiver()) as (receiver,):
        yield receiver


@pytest.fixture(scope="module")
def container_env(tmp_path_factory: pytest.TempPathFactory, settings: dict[str, str], pacs: Orthanc,
                  identity: tuple[TokenIssuer, ThreadedServer], subscriber: Receiver) -> Path:
    """config/orthanc.env for this machine: the same file, these keys changed, every other line as it is."""
    assert pacs.credentials is not None
    loopback = {
        "PACS_SERVICE_URL": pacs.dicomweb_url,
        "PACS_PASSWORD": pacs.credentials[1],
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{PORT}",
        "AUTH_JWKS_URL": f"{identity[1].url}/certs",
        "CALLBACK_URLS": subscriber.url,
        "CALLBACK_SIGNING_SECRET": secrets.token_urlsafe(32),
        "CALLBACK_AUTH_TOKEN": secrets.token_urlsafe(32),
    }
    assert set(loopback) <= set(settings), "config/orthanc.env lost a setting this test adapts"
    lines = []
    for line in ORTHANC_ENV.read_text(encoding="utf-8").splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={loopback[key]}" if key in loopback and not line.startswith("#") else line)
    path = tmp_path_factory.mktemp("env") / "gateway.env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _port_is_free(port: int) -> bool:
    """Whether the image can bind the port on every address, as its ENTRYPOINT does on the host's network."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 (a probe of the port, closed at once)
        except OSError:
            return False
        return True


def manifest_options(shape: str, volume: str, env: Path) -> list[str]:
    """`podman run` options for the manifest's securityContext and volumes."""
    context = {**pod(shape).get("securityContext", {}), **gateway_container(shape)["securityContext"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["runAsNonRoot"] is True
    assert {mount["mountPath"] for mount in gateway_container(shape)["volumeMounts"]} == {"/data", CONTAINER_TMP}
    options = ["--read-only", "--tmpfs", CONTAINER_TMP, "--volume", f"{volume}:/data", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--user", f"{context['runAsUser']}:{context['runAsGroup']}",
               "--network", "host", "--env-file", str(env)]
    if "fsGroup" in context:
        options += ["--group-add", str(context["fsGroup"])]
    return options


@pytest.fixture(scope="module")
def volume() -> Iterator[str]:
    name = f"dicom-gateway-test-data-{uuid.uuid4().hex[:8]}"
    create_volume(name)
    try:
        yield name
    finally:
        podman("volume", "rm", "--force", name, check=False)


def started(container: Container) -> Container:
    """The container, started and ready (GET /-/ready answered 200)."""
    assert _port_is_free(PORT), (f"port {PORT} is in use on this machine: the image listens there (the host's "
                                 "network), so stop what holds it (`make run`?) and run again")
    container.start()
    wait_ready(container)
    return container


def wait_ready(container: Container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if container.state()["Status"] != "running":
            break
        try:
            response = httpx.get(f"http://127.0.0.1:{PORT}/-/ready", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as error:
            last = repr(error)
        time.sleep(0.2)
    stdout, stderr = container.logs()
    raise AssertionError(f"the container was not ready ({container.state()['Status']}; last answer: {last})\n"
                         f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}")


@pytest.fixture(scope="module")
def sidecar(image: str, volume: str, container_env: Path) -> Iterator[Container]:
    """The image as gateway-sidecar.yaml runs it: its `command` (loopback only), its securityContext."""
    command = gateway_container("sidecar")["command"]
    assert listens_on(command) == ("127.0.0.1", PORT)
    container = Container(image, manifest_options("sidecar", volume, container_env), command)
    try:
        yield started(container)
    finally:
        container.remove()
