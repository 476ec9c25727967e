"""Run a private Orthanc for tests, through deploy/dev/orthanc.sh.

Usage from a fixture::

    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), credentials=("gateway", "s3cret"))
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()

start() returns once GET /system answers 200 (about 0.1 s). stop() waits for the process
to exit, which takes 3.5-5 s for an Orthanc that has served requests.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.managed import ManagedServer, control, running

REPO_ROOT = Path(__file__).resolve().parents[2]
ORTHANC_SH = REPO_ROOT / "deploy" / "dev" / "orthanc.sh"

# Generous: orthanc.sh itself retries a failed start up to 5 times and waits up to 30 s
# (then SIGKILL) for a stop.
_START_TIMEOUT_S = 300.0
_STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    """Return a TCP port that is currently free on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Orthanc(ManagedServer):
    """One Orthanc process whose config, data, log and pid file live in ``run_dir``."""

    def __init__(
        self,
        run_dir: Path,
        http_port: int | None = None,
        dicom_port: int | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.http_port = http_port if http_port is not None else free_port()
        if dicom_port is None:
            dicom_port = free_port()
            while dicom_port == self.http_port:
                dicom_port = free_port()
        self.dicom_port = dicom_port
        if credentials is not None and ":" in credentials[0]:
            raise ValueError("an Orthanc user name cannot contain ':'")
        self.credentials = credentials

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "orthanc.log"

    def start(self) -> None:
        """Start (or keep, if already running and answering) and wait until ready."""
        args = [str(self.http_port), str(self.dicom_port)]
        if self.credentials is not None:
            user, password = self.credentials
            args.append(f"{user}:{password}")
        control(ORTHANC_SH, "start", self.run_dir, *args, timeout=_START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop and wait for the process to exit. A no-op when nothing runs."""
        control(ORTHANC_SH, "stop", self.run_dir, timeout=_STOP_TIMEOUT_S)

    def is_running(self) -> bool:
        return running(ORTHANC_SH, self.run_dir, timeout=_STOP_TIMEOUT_S)
