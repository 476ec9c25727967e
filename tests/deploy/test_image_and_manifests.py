"""The Kubernetes manifests against the image they deploy: the port, the user, the probes' paths, the entrypoint and
the grace period they assume are those of deploy/container/Dockerfile and of the gateway itself (issue 16).

tests/image/ holds the built image to the same Dockerfile; these tests need no image, so `make test` runs them.
"""

from __future__ import annotations

import tomllib

import pytest

from gateway.cli import DRAIN_TIMEOUT_S
from tests.conftest import REPO_ROOT, AppClient
from tests.support.deployment import (
    DOCKERFILE,
    gateway_container,
    listens_on,
    pod,
    pre_stop_wait_s,
    probe_target,
    runtime_stage,
    workload,
)

STAGE = runtime_stage()
HOST, PORT = listens_on(STAGE.entrypoint)
LIVENESS = probe_target(STAGE.healthcheck)[2]
READINESS = "/-/ready"
SHAPES = ["deployment", "sidecar"]


def test_the_image_runs_the_gateways_console_script_on_the_port_it_exposes() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert STAGE.entrypoint[:2] == ["dicom-gateway", "serve"]
    assert scripts["dicom-gateway"] == "gateway.cli:main"
    assert HOST == "0.0.0.0"  # noqa: S104 (the image is reached through its container's interface)
    assert STAGE.exposed == [str(PORT)]
    assert STAGE.volumes == ["/data"]


NO_PROXY = "r.build_opener(r.ProxyHandler({})).open("


def test_the_images_healthcheck_asks_liveness_on_that_port_past_any_proxy() -> None:
    assert STAGE.healthcheck[:2] == ["python", "-c"]
    assert probe_target(STAGE.healthcheck) == ("127.0.0.1", PORT, "/-/healthz")
    assert NO_PROXY in STAGE.healthcheck[2]  # urlopen would send it to an HTTP_PROXY from the environment


@pytest.mark.parametrize("shape", SHAPES)
def test_the_manifest_runs_the_images_user(shape: str) -> None:
    uid, gid = (int(part) for part in STAGE.user.split(":"))
    assert uid != 0
    pod_context = pod(shape)["securityContext"]
    container_context = gateway_container(shape)["securityContext"]
    for context in (pod_context, container_context):
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert pod_context["fsGroup"] == gid  # the /data volume is writable by the image's group


def test_the_deployment_runs_the_images_entrypoint_and_probes_its_port() -> None:
    container = gateway_container("deployment")
    assert "command" not in container  # the image's ENTRYPOINT, as the Dockerfile has it
    assert "args" not in container
    assert container["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    annotations = workload("deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORT)
    paths = {probe: container[probe]["httpGet"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {probe: (get["port"], get["path"]) for probe, get in paths.items()} == {
        "startupProbe": ("http", LIVENESS), "livenessProbe": ("http", LIVENESS), "readinessProbe": ("http", READINESS)}


def test_the_sidecar_runs_the_entrypoints_program_on_loopback_and_probes_it_there() -> None:
    container = gateway_container("sidecar")
    command = container["command"]
    assert command[:2] == STAGE.entrypoint[:2]
    assert listens_on(command) == ("127.0.0.1", PORT)
    for probe, path in (("startupProbe", LIVENESS), ("livenessProbe", LIVENESS), ("readinessProbe", READINESS)):
        exec_command = container[probe]["exec"]["command"]
        assert exec_command[:2] == STAGE.healthcheck[:2], probe  # the image's python, as its HEALTHCHECK
        assert probe_target(exec_command) == ("127.0.0.1", PORT, path), probe
        assert NO_PROXY in exec_command[2], probe


async def test_the_probe_paths_are_the_gateways_liveness_and_readiness(app_client: AppClient) -> None:
    """Liveness answers without the PACS; readiness asks it (here it is down, so 503)."""
    async with app_client(pacs_service_url="http://127.0.0.1:9/dicom-web", ready_timeout_s=1) as client:
        assert (await client.get(LIVENESS)).status_code == 200
        ready = await client.get(READINESS)
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"


@pytest.mark.parametrize("shape", SHAPES)
def test_the_grace_period_covers_the_pre_stop_wait_and_the_whole_drain(shape: str) -> None:
    spec = pod(shape)
    grace = spec["terminationGracePeriodSeconds"]
    waits = pre_stop_wait_s(shape)
    assert grace > waits + DRAIN_TIMEOUT_S, (grace, waits)
    # The Dockerfile's `docker run` example gives the same time.
    assert f"--stop-timeout {grace}" in DOCKERFILE.read_text(encoding="utf-8")

