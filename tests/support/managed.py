"""What the test suite's own servers (Orthanc, PostgreSQL, rsyslogd) share: started and stopped as a context
manager, and, for the two driven by a shell script under `deploy/dev/`, one way to call that script."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self


class ManagedServer:
    """`with Server(...) as server:` starts it and stops it again, whatever the block raised."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def control(script: Path, action: str, run_dir: Path, *args: str, timeout: float) -> None:
    """`script start|stop run_dir ...`: raises when the script fails."""
    subprocess.run([str(script), action, str(run_dir), *args], check=True, stdin=subprocess.DEVNULL, timeout=timeout)


def running(script: Path, run_dir: Path, *, timeout: float) -> bool:
    """`script status run_dir` answered 0: the server in `run_dir` is up."""
    result = subprocess.run([str(script), "status", str(run_dir)], check=False, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, timeout=timeout)
    return result.returncode == 0
