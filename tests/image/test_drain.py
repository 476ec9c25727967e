"""SIGTERM, as Kubernetes sends it to gateway-deployment.yaml's pod: the image (its own ENTRYPOINT) stops taking
connections, finishes the download in flight, and exits within the manifest's grace period (`make image-test`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TokenIssuer
from tests.image.conftest import PORT, manifest_options, started
from tests.image.test_image import GATEWAY, keycloak_token, wait_ready
from tests.support.container import Container
from tests.support.deployment import pod, runtime_stage
from tests.support.dicom_factory import generated
from tests.support.exams_support import new_patient_id
from tests.support.orthanc import Orthanc
from tests.support.servers import ThreadedServer

# 32 MiB of pixels, read at about 5 MiB/s: the download lasts some 6 s, most of it after the SIGTERM.
ROWS, COLUMNS, FRAMES = 2048, 2048, 4
CHUNK = 256 * 1024
PAUSE_S = 0.05


@pytest.fixture
def deployment(image: str, volume: str, container_env: Path) -> Iterator[Container]:
    """The image as gateway-deployment.yaml runs it: no command, so the image's ENTRYPOINT (0.0.0.0:8080)."""
    assert "--port" in runtime_stage().entrypoint
    container = Container(image, manifest_options("deployment", volume, container_env))
    try:
        yield started(container)
    finally:
        container.remove()


def test_sigterm_drains_the_download_in_flight_then_exits_within_the_grace_period(
        deployment: Container, pacs: Orthanc, identity: tuple[TokenIssuer, ThreadedServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    grace_s = pod("deployment")["terminationGracePeriodSeconds"]
    patient_id = new_patient_id("TERM")
    instance = generated(patient_id, rows=ROWS, columns=COLUMNS, frames=FRAMES, preamble=bytes(128))
    stored = httpx.post(f"{pacs.url}/instances", content=instance.data, auth=pacs.credentials, timeout=120)
    assert stored.status_code == 200, stored.text
    wait_ready()

    path = f"/exams/studies/{instance.study_uid}/series/{instance.series_uid}/instance/{instance.sop_uid}"
    params = {"PatientId": patient_id, "fileType": "application/dicom"}
    received = bytearray()
    with httpx.stream("GET", f"{GATEWAY}{path}", params=params, timeout=60,
                      headers=keycloak_token(identity[0], "patient", patient_id=patient_id)) as download:
        assert download.status_code == 200
        chunks = download.iter_bytes(CHUNK)
        received += next(chunks)
        deployment.signal("TERM")
        signalled = time.monotonic()
        time.sleep(0.5)
        # Draining: the listening socket is closed, so a new connection is refused at once.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{PORT}/-/healthz", timeout=5)
        assert deployment.state()["Status"] == "running"
        for chunk in chunks:
            received += chunk
            time.sleep(PAUSE_S)
        finished = time.monotonic()
    assert bytes(received) == instance.data
    assert finished - signalled > 2, "the download ended too soon to show a drain"

    exit_code = deployment.wait_exit(timeout=grace_s - (time.monotonic() - signalled))
    exited = time.monotonic()
    stdout, _ = deployment.logs()
    assert exit_code == 0, stdout[-2000:]
    assert exited - signalled < grace_s
    assert '"event": "gateway_stopped"' in stdout
    with capsys.disabled():
        print(f"\nSIGTERM: the download ended {finished - signalled:.1f} s later, the container exited "
              f"{exited - signalled:.1f} s later (grace {grace_s} s)")
