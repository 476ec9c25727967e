"""A real `dicom-gateway serve` process, for tests that need the gateway as it runs in production."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.support.orthanc import free_port

CONSOLE_SCRIPT = Path(sys.executable).parent / "dicom-gateway"


class GatewayProcess:
    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.env = env
        self.log_path = log_path
        self.args = args  # more `serve` options (`--workers 2`)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(CONSOLE_SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self._process.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/-/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the gateway did not start: {self.log()}")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the gateway process was not started")
        return self._process.pid

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup (what a crash or an OOM kill does)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
