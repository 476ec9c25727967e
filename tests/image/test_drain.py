"""SIGTERM, as Kubernetes sends it to gateway-deployment.yaml's pod: the image (its own ENTRYPOINT) stops taking
connections, finishes the download in flight, and exits within the manifest's grace period (`make image-test`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TokenIssuer
from tests.image.conftest import PORT, manifest_options, started
from tests.image.test_image import GATEWAY, keycloak_token
from tests.support.container import Container
from tests.support.deployment import pod, pre_stop_wait_s, runtime_stage
from tests.support.dicom_factory import generated
from tests.support.exams_support import new_patient_id
from tests.support.orthanc import Orthanc
from tests.support.servers import ThreadedServer

# 48 MiB of pixels, more than loopback's socket buffers hold here (tcp_rmem's maximum is 32 MiB), read at about
# 5 MiB/s: the download lasts some 10 s, nearly all of it after the SIGTERM.
ROWS, COLUMNS, FRAMES = 2048, 2048, 6
CHUNK = 256 * 1024
PAUSE_S = 0.05
# uvicorn's line when SIGTERM has closed the listening socket and it waits for the requests in flight.
DRAINING = "Waiting for connections to close."  # (uvicorn adds "(CTRL+C to force quit)")


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
    # Kubernetes counts the grace period from the pod's deletion: the preStop wait comes out of it first.
    left_after_pre_stop_s = pod("deployment")["terminationGracePeriodSeconds"] - pre_stop_wait_s("deployment")
    patient_id = new_patient_id("TERM")
    instance = generated(patient_id, rows=ROWS, columns=COLUMNS, frames=FRAMES, preamble=bytes(128))
    stored = httpx.post(f"{pacs.url}/instances", content=instance.data, auth=pacs.credentials, timeout=120)
    assert stored.status_code == 200, stored.text

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
        refused_new_connection(within_s=5)
        assert deployment.state()["Status"] == "running"
        for chunk in chunks:
            received += chunk
            time.sleep(PAUSE_S)
        finished = time.monotonic()
    assert bytes(received) == instance.data

    exit_code = deployment.wait_exit(timeout=left_after_pre_stop_s - (time.monotonic() - signalled))
    exited = time.monotonic()
    stdout, _ = deployment.logs()
    assert exit_code == 0, stdout[-2000:]  # PID 1 (see the Dockerfile's header)
    assert exited - finished < 5, "the gateway lingered after its last request"
    events = [json.loads(line) for line in stdout.splitlines()]
    names = [event["event"] for event in events]
    draining = next(index for index, name in enumerate(names) if name.startswith(DRAINING))
    download_line = next(index for index, event in enumerate(events)
                         if event.get("route") == "/exams/studies/{study}/series/{series}/instance/{instance}")
    # The download's access line is written when its last byte is sent: after the drain began.
    assert draining < download_line < names.index("gateway_stopped"), names
    with capsys.disabled():
        print(f"\nSIGTERM: the download ended {finished - signalled:.1f} s later, the container exited "
              f"{exited - signalled:.1f} s later ({left_after_pre_stop_s:.0f} s of grace left after preStop)")


def refused_new_connection(within_s: float) -> None:
    """Draining: the listening socket is closed, so a new connection is refused."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{PORT}/-/healthz", timeout=2)
        except httpx.ConnectError:
            return
        time.sleep(0.1)
    raise AssertionError(f"new connections were still accepted {within_s} s after SIGTERM")
