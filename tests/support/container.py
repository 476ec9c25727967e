"""The gateway's container image under podman, for tests/image/ (`make image-test`).

Two settings of the machine, from the environment, as deploy/container/build.sh has them:
- IMAGE_RUNTIME: the OCI runtime (default runc; crun's rlimit calls are refused inside these machines' VMs);
- IMAGE_RUN_OPTIONS: extra `podman run` options (default: rlimits at or below these VMs' hard limits, since podman
  asks for more and the VM grants no CAP_SYS_RESOURCE to raise them).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from typing import Any

RUNTIME = os.environ.get("IMAGE_RUNTIME", "runc")
RUN_OPTIONS = shlex.split(os.environ.get("IMAGE_RUN_OPTIONS",
                                         "--ulimit nofile=16384:16384 --ulimit nproc=4096:4096"))


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", "--runtime", RUNTIME, *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {shlex.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def image_config(image: str) -> dict[str, Any]:
    """The image's configuration (User, Entrypoint, ExposedPorts...), as a runtime reads it, and its Healthcheck
    (which podman shows beside the configuration, not in it; the image is built in Docker's format to keep it)."""
    inspected: list[dict[str, Any]] = json.loads(podman("image", "inspect", image).stdout)
    config: dict[str, Any] = {**inspected[0]["Config"], "Healthcheck": inspected[0].get("Healthcheck")}
    return config


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)


# Every container and volume the tests make carries this label, so that what a killed run left behind can be found.
LABEL = "dicom-gateway-test"


def remove_leftovers() -> None:
    """Containers and volumes of an earlier run that could not clean up (killed, timed out)."""
    names = podman("ps", "--all", "--quiet", "--filter", f"label={LABEL}").stdout.split()
    if names:
        podman("rm", "--force", "--volumes", "--time", "0", *names, check=False)
    volumes = podman("volume", "ls", "--quiet", "--filter", f"label={LABEL}").stdout.split()
    if volumes:
        podman("volume", "rm", "--force", *volumes, check=False)


def create_volume(name: str) -> None:
    podman("volume", "create", "--label", LABEL, name)


def run_once(image: str, *command: str, entrypoint: str, options: tuple[str, ...] = ()) -> \
        subprocess.CompletedProcess[str]:
    """`command` in a throwaway container of the image, with `entrypoint` instead of the image's."""
    return podman("run", "--rm", "--label", LABEL, "--no-healthcheck", *RUN_OPTIONS, *options,
                  "--entrypoint", entrypoint, image, *command, check=False)


class Container:
    """One detached container of the image. `options` are `podman run` options; `command` replaces the entrypoint
    when given (as a Kubernetes `command:` does), else the image's ENTRYPOINT runs."""

    def __init__(self, image: str, options: list[str], command: list[str] | None = None) -> None:
        self.image = image
        self.name = f"dicom-gateway-test-{uuid.uuid4().hex[:8]}"
        self.options = options
        self.command = command

    def start(self) -> None:
        entrypoint: list[str] = []
        args: list[str] = []
        if self.command is not None:
            entrypoint = ["--entrypoint", json.dumps(self.command[:1])]
            args = self.command[1:]
        # --no-healthcheck: podman would hand the image's HEALTHCHECK to systemd timers, which these machines do
        # not run; the tests run its command themselves.
        podman("run", "--detach", "--name", self.name, "--label", LABEL, "--no-healthcheck", *RUN_OPTIONS,
               *self.options, *entrypoint, self.image, *args)

    def exec(self, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        variables = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return podman("exec", *variables, self.name, *command, check=False)

    def logs(self) -> tuple[str, str]:
        """What the container wrote to its stdout and to its stderr."""
        result = podman("logs", self.name)
        return result.stdout, result.stderr

    def state(self) -> dict[str, Any]:
        inspected: list[dict[str, Any]] = json.loads(podman("container", "inspect", self.name).stdout)
        state: dict[str, Any] = inspected[0]["State"]
        return state

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.name)

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the container has stopped; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state["Status"] in ("exited", "stopped"):
                return int(state["ExitCode"])
            time.sleep(0.1)
        raise AssertionError(f"{self.name} still runs {timeout} s later")

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", self.name, check=False)
