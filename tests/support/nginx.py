"""Run a private nginx (Debian's package) as a plain reverse proxy in front of an upstream: the benchmark's peer.

Usage::

    with Nginx(run_dir, upstream="http://127.0.0.1:8042") as proxy:
        httpx.get(f"{proxy.url}/dicom-web/studies")      # the same path, answered through nginx

The config is what a careful operator would put in front of a DICOMweb server, and nothing more: HTTP/1.1 with
keep-alive to the upstream, the client's Host passed on (so Orthanc's RetrieveURLs are the same), no limit on
the body size, and neither requests nor answers buffered (so an upload and a
download stream through as they do through the gateway, rather than being spooled to disk first). It logs one access
line per request to a file, buffered, as the gateway does to stdout. One worker process: the gateway runs one too.
Everything lives in ``run_dir``: the config, the pid file, the logs and the temporary directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.managed import ManagedServer
from tests.support.orthanc import free_port

NGINX = Path(shutil.which("nginx") or "/usr/sbin/nginx")

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 20.0


def available() -> bool:
    return NGINX.exists()


class Nginx(ManagedServer):
    def __init__(self, run_dir: Path, upstream: str, port: int | None = None, workers: int = 1) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"an http://host:port upstream is needed, not {upstream!r}")
        self.run_dir = Path(run_dir)
        self.upstream = f"{parts.hostname}:{parts.port}"
        self.port = port if port is not None else free_port()
        self.workers = workers
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.run_dir
        # As root, the workers would otherwise switch to `nobody`, who cannot write the temporary directories here.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}"
            f"worker_processes {self.workers};\n"
            f"pid {d / 'nginx.pid'};\n"
            f"error_log {d / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  access_log {d / 'access.log'} combined buffer=64k flush=1s;\n"
            f"  client_body_temp_path {d / 'tmp' / 'body'};\n"
            f"  proxy_temp_path {d / 'tmp' / 'proxy'};\n"
            f"  fastcgi_temp_path {d / 'tmp' / 'fastcgi'};\n"
            f"  uwsgi_temp_path {d / 'tmp' / 'uwsgi'};\n"
            f"  scgi_temp_path {d / 'tmp' / 'scgi'};\n"
            "  keepalive_requests 100000;\n"
            f"  upstream pacs {{ server {self.upstream}; keepalive 32; }}\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    client_max_body_size 0;\n"
            "    location / {\n"
            "      proxy_pass http://pacs;\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_set_header Host $http_host;\n"
            "      proxy_request_buffering off;\n"
            "      proxy_buffering off;\n"
            "      proxy_read_timeout 600s;\n"
            "      proxy_send_timeout 600s;\n"
            "    }\n"
            "  }\n"
            "}\n"
        )

    def start(self) -> None:
        if self.is_running():
            return
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / "nginx.conf"
        config_path.write_text(self.config())
        with (self.run_dir / "nginx.stderr").open("ab") as stderr:
            # -p: the prefix for any relative path nginx opens; -g: stay in the foreground, a child of this process.
            self._process = subprocess.Popen(
                [str(NGINX), "-p", str(self.run_dir), "-c", str(config_path), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=self.run_dir,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited ({self._process.returncode}) at start: {self._diagnostics()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not listen on {self.port}: {self._diagnostics()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGQUIT: nginx's graceful stop (requests in flight finish); SIGKILL after the timeout."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGQUIT)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def pids(self) -> list[int]:
        """The master and its workers: every process whose CPU time is nginx's."""
        if self._process is None:
            return []
        master = self._process.pid
        children = Path(f"/proc/{master}/task/{master}/children")
        try:
            workers = [int(pid) for pid in children.read_text().split()]
        except OSError:
            workers = []
        return [master, *workers]

    def access_lines(self) -> list[str]:
        try:
            return (self.run_dir / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def _diagnostics(self) -> str:
        parts = []
        for name in ("nginx.stderr", "error.log"):
            with_path = self.run_dir / name
            if with_path.exists():
                parts.append(f"{name}: {with_path.read_text(errors='replace')[-2000:]}")
        return "; ".join(parts) or "(no output)"
