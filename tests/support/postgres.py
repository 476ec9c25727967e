"""Run a private PostgreSQL for tests, through deploy/dev/postgres.sh.

Usage from a fixture::

    postgres = Postgres(tmp_path_factory.mktemp("postgres"))
    postgres.start()
    try:
        yield postgres
    finally:
        postgres.stop()

    url = postgres.new_database()  # postgresql://postgres@127.0.0.1:PORT/t_<hex>, empty

The server listens on 127.0.0.1 only, with trust auth for the superuser ``postgres``
and fsync off. start() takes 0.5-1 s the first time in a run_dir (initdb) and about
0.15 s afterwards; stop() takes about 0.15 s; new_database() about 0.15 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

from tests.support.managed import ManagedServer, control, running
from tests.support.orthanc import REPO_ROOT, free_port

POSTGRES_SH = REPO_ROOT / "deploy" / "dev" / "postgres.sh"

# Generous: postgres.sh retries a start that dies early twice and waits up to 60 s per
# attempt; a stop waits up to 30 s before escalating.
_START_TIMEOUT_S = 300.0
_STOP_TIMEOUT_S = 60.0
_CLIENT_TIMEOUT_S = 60.0

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def pg_bin_dir() -> Path:
    """$PG_BIN, or else the newest /usr/lib/postgresql/*/bin: what postgres.sh picks."""
    if override := os.environ.get("PG_BIN"):
        return Path(override)
    candidates = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if path.is_dir()]
    if not candidates:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin; run deploy/dev/install-deps.sh")
    return max(candidates, key=_version_key)


class Postgres(ManagedServer):
    """One PostgreSQL server whose cluster, socket and log live in ``run_dir``."""

    def __init__(self, run_dir: Path, port: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.port = port if port is not None else free_port()

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    @property
    def log_path(self) -> Path:
        return self.run_dir / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start (or keep, if already running and answering) and wait until ready."""
        control(POSTGRES_SH, "start", self.run_dir, str(self.port), timeout=_START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop (fast shutdown) and wait for the server to exit. A no-op when nothing runs."""
        control(POSTGRES_SH, "stop", self.run_dir, timeout=_STOP_TIMEOUT_S)

    def is_running(self) -> bool:
        return running(POSTGRES_SH, self.run_dir, timeout=_STOP_TIMEOUT_S)

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database (``t_<hex>`` unless named) and return its URL."""
        if name is None:
            name = f"t_{uuid.uuid4().hex}"
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r} must match {_DATABASE_NAME.pattern}")
        result = subprocess.run(
            [
                str(pg_bin_dir() / "createdb"),
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--username=postgres",
                "--no-password",
                name,
            ],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_CLIENT_TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"createdb {name} failed ({result.returncode}): {result.stderr.strip()}")
        return self.url(name)
