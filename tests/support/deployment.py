"""What deploy/ says about the running gateway: the Dockerfile's runtime stage and the Kubernetes manifests' gateway
container, read from the files, for the tests that hold them to each other and to the built image."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "container" / "Dockerfile"
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
MANIFESTS = {"deployment": KUBERNETES / "gateway-deployment.yaml", "sidecar": KUBERNETES / "gateway-sidecar.yaml"}


@dataclass(frozen=True)
class Runtime:
    """The Dockerfile's last stage, with its ARG defaults substituted."""

    user: str
    exposed: list[str]
    volumes: list[str]
    entrypoint: list[str]
    healthcheck: list[str]  # the exec form after CMD
    workdir: str


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def runtime_stage(text: str | None = None) -> Runtime:
    pairs = _instructions(DOCKERFILE.read_text(encoding="utf-8") if text is None else text)
    last_from = max(index for index, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    args: dict[str, str] = {}
    found: dict[str, list[str]] = {"USER": [], "EXPOSE": [], "VOLUME": [], "ENTRYPOINT": [], "HEALTHCHECK": [],
                                   "WORKDIR": []}
    for keyword, rest in pairs[last_from + 1:]:
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword in found:
            found[keyword].append(re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], rest))
    for keyword, values in found.items():
        assert len(values) == 1, f"the Dockerfile's runtime stage has {len(values)} {keyword} instructions"
    healthcheck = found["HEALTHCHECK"][0]
    assert " CMD [" in f" {healthcheck}", "HEALTHCHECK is not in exec form"
    return Runtime(
        user=found["USER"][0],
        exposed=found["EXPOSE"][0].split(),
        volumes=json.loads(found["VOLUME"][0]),
        entrypoint=json.loads(found["ENTRYPOINT"][0]),
        healthcheck=json.loads(healthcheck[healthcheck.index("CMD [") + 4:]),
        workdir=found["WORKDIR"][0],
    )


def _option(argv: list[str], name: str) -> str:
    """The value `dicom-gateway serve` takes for `--name` (argparse: the last one given wins)."""
    values = [argv[index + 1] for index, word in enumerate(argv[:-1]) if word == name]
    assert values, f"{shlex.join(argv)} has no {name}"
    return values[-1]


def listens_on(argv: list[str]) -> tuple[str, int]:
    return _option(argv, "--host"), int(_option(argv, "--port"))


def probe_target(command: list[str]) -> tuple[str, int, str]:
    """(host, port, path) of an exec probe's `python -c "...open('<url>'...)"`."""
    urls = re.findall(r"open\('([^']+)'", " ".join(command))
    assert len(urls) == 1, command
    parts = urlsplit(urls[0])
    assert parts.hostname is not None, urls[0]
    assert parts.port is not None, urls[0]
    return parts.hostname, parts.port, parts.path


def workload(shape: str) -> dict[str, Any]:
    """The Deployment of the manifest for `shape` ("deployment" or "sidecar")."""
    documents = list(yaml.safe_load_all(MANIFESTS[shape].read_text(encoding="utf-8")))
    found: dict[str, Any] = next(document for document in documents if document and document["kind"] == "Deployment")
    return found


def pod(shape: str) -> dict[str, Any]:
    """The pod spec of the manifest's workload."""
    spec: dict[str, Any] = workload(shape)["spec"]["template"]["spec"]
    return spec


def gateway_container(shape: str) -> dict[str, Any]:
    """The gateway's container in the manifest: the one that runs the dicom-gateway image."""
    spec = pod(shape)
    candidates = [*spec.get("initContainers", []), *spec["containers"]]
    found = [container for container in candidates if "/dicom-gateway:" in container["image"]]
    assert len(found) == 1, [container["name"] for container in candidates]
    container: dict[str, Any] = found[0]
    return container


def pre_stop_wait_s(shape: str) -> float:
    """Seconds the pod's preStop hooks sleep (`python -c "import time; time.sleep(N)"`) before SIGTERM is sent."""
    spec = pod(shape)
    commands = [" ".join(container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
                for container in [*spec.get("initContainers", []), *spec["containers"]]]
    return sum(float(seconds) for command in commands for seconds in re.findall(r"time\.sleep\(([\d.]+)\)", command))
