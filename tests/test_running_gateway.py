"""The gateway as it runs: `dicom-gateway serve` and `make run` against real Orthanc (acceptance 1 and 2 of issue 2)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, gateway_env
from tests.support.orthanc import Orthanc, free_port
from tests.support.processes import CONSOLE_SCRIPT, GatewayProcess


def wait_for_status(url: str, status: int, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout} s (last: {last and last.text})")


def test_ready_follows_orthanc_down_and_up_without_restarting_the_gateway(tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    env = gateway_env(pacs_service_url=orthanc.dicomweb_url, pacs_profile="orthanc", auth_mode="none")
    try:
        with GatewayProcess(env, tmp_path / "gateway.log") as gateway:
            ready = wait_for_status(f"{gateway.url}/-/ready", 200)
            assert ready.json() == {"status": "ready", "upstream": "orthanc"}
            orthanc.stop()
            down = wait_for_status(f"{gateway.url}/-/ready", 503)
            assert down.json()["error"]["code"] == "not_ready"
            assert down.json()["error"]["details"]["reason"] == "could not connect to the PACS"
            orthanc.start()  # same ports, same data directory
            wait_for_status(f"{gateway.url}/-/ready", 200)
            assert gateway.is_running()  # the same process served all three answers
            # uvicorn re-raises the signal after a graceful shutdown, so the exit status is -SIGTERM.
            assert gateway.stop() == -signal.SIGTERM
            assert '"event": "gateway_stopped"' in gateway.log()
    finally:
        orthanc.stop()


def test_make_run_serves_ready_with_orthanc_and_sample_exams_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    ports = {"ORTHANC_HTTP_PORT": free_port(), "ORTHANC_DICOM_PORT": free_port(), "GATEWAY_PORT": free_port()}
    env = {**gateway_env(), **{k: str(v) for k, v in ports.items()}, "RUN_DIR": str(tmp_path / "run"),
           "LOG_FORMAT": "json"}
    log = (tmp_path / "make-run.log").open("wb")
    # A session of its own, so the test can send Ctrl-C (SIGINT) to the whole group as a terminal would.
    make = subprocess.Popen(["make", "run"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        wait_for_status(f"{gateway}/-/ready", 200, timeout=120)
        studies = httpx.get(f"http://127.0.0.1:{ports['ORTHANC_HTTP_PORT']}/dicom-web/studies", timeout=5).json()
        assert len(studies) >= 5  # the sample exams were loaded
        assert httpx.get(f"{gateway}/uid", timeout=5).status_code == 200
    finally:
        os.killpg(make.pid, signal.SIGINT)
        returncode = make.wait(timeout=60)
        log.close()
    output = (tmp_path / "make-run.log").read_text()
    assert "curl http://127.0.0.1:" in output, output  # it printed what to try
    for port in ports.values():
        with_socket_closed(port)
    assert returncode in (0, 2, -signal.SIGINT), output


def with_socket_closed(port: int) -> None:
    """Nothing listens on the port any more: both processes stopped."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        except httpx.ConnectError:
            return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"something still listens on port {port}")


def test_workers_above_one_on_sqlite_are_refused(tmp_path: Path) -> None:
    env = gateway_env(pacs_service_url="http://127.0.0.1:1/dicom-web", auth_mode="none",
                      database_url=f"sqlite:///{tmp_path / 'events.db'}")
    result = subprocess.run([str(CONSOLE_SCRIPT), "serve", "--port", str(free_port()), "--workers", "2"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--workers above 1 needs DATABASE_URL=postgresql" in result.stderr


def test_two_workers_share_the_port_and_stop_together(tmp_path: Path, orthanc: Orthanc, postgres_url: str) -> None:
    env = gateway_env(pacs_service_url=orthanc.dicomweb_url, pacs_profile="orthanc", auth_mode="none",
                      database_url=postgres_url)
    gateway = GatewayProcess(env, tmp_path / "gateway.log", args=("--workers", "2"))
    with gateway:
        workers = Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split()
        # uvicorn's supervisor, its two workers, and multiprocessing's resource tracker (which has no socket).
        serving = [pid for pid in workers if _listens(int(pid), gateway.port)]
        assert len(serving) == 2, (workers, gateway.log())
        for _ in range(20):
            assert httpx.get(f"{gateway.url}/-/ready", timeout=10).status_code == 200
        gateway.stop()
    deadline = time.monotonic() + 15  # multiprocessing's resource tracker leaves once its pipe is closed
    while (left := [pid for pid in workers if _alive(int(pid))]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert gateway.log().count('"event": "gateway_stopped"') == 2, gateway.log()


def _alive(pid: int) -> bool:
    try:
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _listens(pid: int, port: int) -> bool:
    """Whether the process holds a socket listening on the port (from /proc/<pid>/net/tcp and its fds)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A" and fields[9] in inodes:
            return True
    return False
