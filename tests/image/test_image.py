"""The built image, as gateway-sidecar.yaml runs it, in front of the test Orthanc (issue 16, `make image-test`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import httpx
import pytest
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT, TokenIssuer
from tests.image.conftest import CONTAINER_TMP, PORT
from tests.support.container import Container, image_config, image_size, podman, run_once
from tests.support.deployment import gateway_container, probe_target, runtime_stage
from tests.support.dicom_factory import generated
from tests.support.exams_support import new_patient_id
from tests.support.receivers import Receiver
from tests.support.servers import ThreadedServer

GATEWAY = f"http://127.0.0.1:{PORT}"
# Measured: 268 MiB on the Debian base (the base about 123 MiB, /opt/venv 153 MB with its bytecode). A dev tool, a
# compiler, a second Python or the build's wheels left behind would push it past this.
MAX_IMAGE_MIB = 320
# Where nothing listens: a request sent through this proxy would be refused.
PROXIES = {name: "http://127.0.0.1:9" for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")}


def keycloak_token(issuer: TokenIssuer, role: str, **claims: Any) -> dict[str, str]:
    """A bearer token shaped as the hospital's Keycloak issues it (roles under realm_access, config/orthanc.env)."""
    token = issuer.token(roles=None, realm_access={"roles": [role]}, **claims)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def running(sidecar: Container) -> Container:
    return sidecar


def test_the_image_is_configured_as_its_dockerfile_says(image: str) -> None:
    config = image_config(image)
    stage = runtime_stage()
    assert config["User"] == stage.user
    assert config["Entrypoint"] == stage.entrypoint
    assert set(config["ExposedPorts"]) == {f"{port}/tcp" for port in stage.exposed}
    assert set(config["Volumes"]) == set(stage.volumes)
    assert config["WorkingDir"] == stage.workdir
    assert config["Healthcheck"]["Test"] == ["CMD", *stage.healthcheck]


def test_ready_then_an_upload_a_search_and_a_retrieval(running: Container,
                                                       identity: tuple[TokenIssuer, ThreadedServer],
                                                       subscriber: Receiver) -> None:
    issuer = identity[0]
    patient_id = new_patient_id("IMG")
    instance = generated(patient_id, rows=128, columns=96)
    ready = httpx.get(f"{GATEWAY}/-/ready", timeout=10)
    assert ready.json() == {"status": "ready", "upstream": "orthanc"}

    upload = httpx.post(f"{GATEWAY}/exams", files=[("file", ("a.dcm", instance.data, "application/dicom"))],
                        headers=keycloak_token(issuer, "clinician"), timeout=30)
    assert upload.status_code == 200, upload.text

    patient = keycloak_token(issuer, "patient", patient_id=patient_id)
    studies = httpx.get(f"{GATEWAY}/exams/studies", params={"PatientId": patient_id}, headers=patient, timeout=30)
    assert studies.status_code == 200, studies.text
    assert [study["0020000D"]["Value"] for study in studies.json()] == [[instance.study_uid]]

    path = f"/exams/studies/{instance.study_uid}/series/{instance.series_uid}/instance/{instance.sop_uid}"
    retrieved = httpx.get(f"{GATEWAY}{path}", params={"PatientId": patient_id, "fileType": "application/dicom"},
                          headers=patient, timeout=30)
    assert retrieved.status_code == 200, retrieved.text
    # The gateway zeroes the preamble of what it stores (a preamble can smuggle another format); the rest is as sent.
    assert retrieved.content == bytes(128) + instance.without_preamble

    other = keycloak_token(issuer, "patient", patient_id=new_patient_id("IMG"))
    refused = httpx.get(f"{GATEWAY}{path}", params={"PatientId": patient_id}, headers=other, timeout=30)
    assert refused.status_code == 403, refused.text

    # The new-exam follower saw the study in Orthanc's change feed, stored the event on the /data volume and
    # delivered it to config/orthanc.env's subscriber (here on loopback).
    deadline = time.monotonic() + 30
    while instance.study_uid not in subscriber.events_by_study() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert instance.study_uid in subscriber.events_by_study()
    database = running.exec("ls", "-ln", "/data/gateway.db")
    assert database.returncode == 0, database.stderr
    assert database.stdout.split()[2:4] == ["10001", "10001"], database.stdout


def test_its_logs_are_json_lines_on_stdout_without_phi(running: Container,
                                                        identity: tuple[TokenIssuer, ThreadedServer]) -> None:
    patient_id = new_patient_id("LOG")
    patient = keycloak_token(identity[0], "patient", patient_id=patient_id)
    answer = httpx.get(f"{GATEWAY}/exams/studies", params={"PatientId": patient_id}, headers=patient, timeout=30)
    assert answer.status_code == 200, answer.text
    stdout, stderr = running.logs()
    assert stderr == ""
    events = [json.loads(line) for line in stdout.splitlines()]  # every line is one JSON object
    assert all(isinstance(event, dict) and "event" in event for event in events)
    started = [event for event in events if event["event"] == "gateway_started"]
    assert len(started) == 1, stdout
    searches = [event for event in events if event.get("route") == "/exams/studies"]
    assert searches
    assert all(event.get("request_id") for event in searches), searches
    assert patient_id not in stdout


def test_the_healthcheck_command_succeeds_and_fails_when_nothing_listens(running: Container, image: str) -> None:
    command = image_config(image)["Healthcheck"]["Test"]
    assert command[0] == "CMD"
    result = running.exec(*command[1:])
    assert result.returncode == 0, result.stderr
    # A proxy in the environment (a platform may inject one) does not take the request for 127.0.0.1 away.
    assert running.exec(*command[1:], env=PROXIES).returncode == 0
    # The same command where nothing listens (a container of the image on a network of its own, no gateway).
    alone = run_once(image, *command[2:], entrypoint=command[1], options=("--network", "none"))
    assert alone.returncode != 0
    assert "Connection refused" in alone.stderr, alone.stderr


def test_the_sidecar_manifests_exec_probes_succeed(running: Container) -> None:
    container = gateway_container("sidecar")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert probe_target(command)[:2] == ("127.0.0.1", PORT)
        result = running.exec(*command, env=PROXIES)
        assert result.returncode == 0, (probe, result.stderr)


def test_it_runs_as_the_non_root_user_on_a_read_only_root(running: Container, image: str) -> None:
    assert running.exec("id", "-u").stdout.strip() == "10001"
    # The image's own USER, without the manifest's runAsUser (as `docker run` starts it).
    assert run_once(image, "-u", entrypoint="id").stdout.strip() == "10001"
    status = running.exec("cat", "/proc/1/status").stdout
    assert [line.split()[1:] for line in status.splitlines() if line.startswith(("Uid:", "Gid:"))] == \
        [["10001"] * 4, ["10001"] * 4]
    for path in ("/srv/gateway/written", "/opt/venv/written", "/etc/written"):
        denied = running.exec("touch", path)
        assert denied.returncode != 0, path
        assert "Read-only file system" in denied.stderr, (path, denied.stderr)
    assert running.exec("touch", "/data/written").returncode == 0
    assert running.exec("touch", f"{CONTAINER_TMP}/written").returncode == 0
    capabilities = [line.split()[1] for line in status.splitlines() if line.startswith(("CapEff:", "CapPrm:"))]
    assert capabilities == ["0000000000000000", "0000000000000000"]


def _pins(lock_text: str) -> dict[str, str]:
    """Canonical name -> version of a lock's `name==version` entries (hash lines and comments left out)."""
    pins = [line.split(" ")[0] for line in lock_text.splitlines() if line and not line[0].isspace()
            and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in (pin.split("==") for pin in pins)}


def _runtime_lock() -> dict[str, str]:
    """requirements.lock's runtime subset, as deploy/container/runtime_lock.py computes it for the image."""
    printed = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "python"), "deploy/container/runtime_lock.py",
                              "pyproject.toml", "requirements.lock"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout
    return _pins(printed)


def test_it_holds_the_runtime_lock_and_no_dev_tools(image: str) -> None:
    listing = run_once(image, "-I", "-c", "import importlib.metadata as m, json; "
                       "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
                       entrypoint="python")
    assert listing.returncode == 0, listing.stderr
    installed = {canonicalize_name(name): version for name, version in json.loads(listing.stdout).items()}
    runtime = _runtime_lock()
    gateway_version = installed.pop(canonicalize_name("dicom-gateway"))
    assert gateway_version
    assert installed == runtime
    dev_only = set(_pins((REPO_ROOT / "requirements.lock").read_text(encoding="utf-8"))) - set(runtime)
    assert {"pytest", "mypy", "ruff", "uv", "setuptools"} <= dev_only  # pinned in the lock, not in the image
    assert "pip" not in installed
    tools = run_once(image, "-c", "for t in pip pip3 uv ruff mypy pytest gcc cc make git; do command -v $t; done; "
                     "echo END", entrypoint="sh")
    assert tools.stdout == "END\n", tools.stdout


def test_it_has_no_package_installer_and_no_setuid_file(image: str) -> None:
    """Neither the venv's python nor the base's own can import pip, setuptools or wheel, no wheel file is left for
    ensurepip or venv to install from, and no file can change the user it runs as."""
    base_python = run_once(image, "-f", "/opt/venv/bin/python", entrypoint="readlink").stdout.strip()
    assert base_python.startswith("/usr/"), base_python
    for python in ("/opt/venv/bin/python", base_python):
        found = run_once(image, "-I", "-c", "import importlib.util as u; "
                         "print([m for m in ('pip', 'setuptools', 'wheel') if u.find_spec(m)])", entrypoint=python)
        assert found.stdout.strip() == "[]", (python, found.stdout, found.stderr)
    leftovers = run_once(image, "/", "-xdev", "(", "-name", "*.whl", "-o", "-type", "f", "-perm", "/6000", ")",
                         "-print", entrypoint="find", options=("--user", "0"))
    assert leftovers.returncode == 0, leftovers.stderr
    assert leftovers.stdout == "", leftovers.stdout


def test_the_build_left_no_host_file_behind(image: str) -> None:
    """The build mounts the host's CA bundle (IMAGE_CA_FILE) for the package index: the image keeps its base's."""
    base = image_config(image)["Labels"]["org.opencontainers.image.base.name"]
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    digests = [run_once(reference, bundle, entrypoint="sha256sum", options=("--user", "0")).stdout.split()[:1]
               for reference in (image, base)]
    assert digests[0], digests
    assert digests[0] == digests[1]
    for path in ("/src", "/opt/tools", f"{CONTAINER_TMP}/wheels", f"{CONTAINER_TMP}/runtime.lock"):
        listed = run_once(image, path, entrypoint="ls", options=("--user", "0"))
        assert listed.returncode == 2, (path, listed.stderr)  # ls's own "no such file", not podman's 125-127
        assert "No such file or directory" in listed.stderr


# What the runtime stage may add to its base and change in it (`podman image diff`): the venv, the user, the
# directories, the setuid bits taken off (mode changes of /usr/bin's and /usr/sbin's files), and dpkg's own record
# of the installers purged. Directories are "changed" when anything below them is.
ADDED = re.compile(r"/opt/venv(/.*)?|/srv/gateway|/srv/gateway/data|/data|/etc/(g?shadow|passwd|group)-")
CHANGED = re.compile(r"/|/etc|/etc/(g?shadow|passwd|group)-?|/opt|/srv|/usr|/usr/(bin|sbin)(/[\w.-]+)?"
                     r"|/usr/lib|/usr/lib/python3\.11|/usr/share(/doc|/lintian|/lintian/overrides)?"
                     r"|/var|/var/(cache|log|lib)(/apt)?|/var/lib/apt/(lists|extended_states)"
                     r"|/var/lib/dpkg(/(info|lock|status|status-old|triggers|triggers/Lock))?")


def test_the_image_adds_to_its_base_only_the_venv_the_user_and_the_directories(image: str) -> None:
    """A file that a build-time mount, a copied source tree or a cache left behind is on neither list."""
    base = image_config(image)["Labels"]["org.opencontainers.image.base.name"]
    lines = podman("image", "diff", image, base).stdout.splitlines()
    assert lines
    entries = [line.split(" ", 1) for line in lines]
    unexpected = sorted(f"{kind} {path}" for kind, path in entries
                        if (kind == "A" and not ADDED.fullmatch(path)) or (kind == "C" and not CHANGED.fullmatch(path))
                        or kind not in "ACD")
    assert not unexpected, unexpected


def test_its_size_is_printed_and_bounded(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    size_mib = image_size(image) / 2**20
    with capsys.disabled():
        print(f"\nimage {image}: {size_mib:.0f} MiB")
    assert size_mib < MAX_IMAGE_MIB
