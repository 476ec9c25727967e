"""The private PostgreSQL of tests/postgres.py: start, separate databases, stop, port freed."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from tests.support.postgres import Postgres


def _port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port, and a new server could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL itself does: tolerates TIME_WAIT leftovers, fails on a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


async def _has_table(url: str, table: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetchval("select to_regclass($1) is not null", f"public.{table}")
    finally:
        await conn.close()
    return bool(found)


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A run directory outside pytest's temporary root (see the `postgres` fixture in conftest)."""
    path = Path(tempfile.mkdtemp(prefix="dicom-gateway-pg-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_databases_are_separate_and_stop_frees_the_port(pg_dir: Path) -> None:
    server = Postgres(pg_dir / "pg")
    t0 = time.monotonic()
    server.start()
    started_s = time.monotonic() - t0
    try:
        assert server.is_running()
        assert server.admin_url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        first = server.new_database()
        second = server.new_database("t_named_second")
        assert second == f"postgresql://postgres@127.0.0.1:{server.port}/t_named_second"
        assert first != second
        assert first.rsplit("/", 1)[1].startswith("t_")

        names = []
        for url in (first, second):
            conn = await asyncpg.connect(url)
            try:
                assert await conn.fetchval("select 1") == 1
                names.append(await conn.fetchval("select current_database()"))
            finally:
                await conn.close()
        assert names == [first.rsplit("/", 1)[1], "t_named_second"]

        conn = await asyncpg.connect(first)
        try:
            await conn.execute("create table only_here (id int primary key)")
            await conn.execute("insert into only_here values (1)")
        finally:
            await conn.close()
        assert await _has_table(first, "only_here")
        assert not await _has_table(second, "only_here")

        with pytest.raises(RuntimeError, match="already exists"):
            server.new_database("t_named_second")
        with pytest.raises(ValueError, match="must match"):
            server.new_database('bad"name')
    finally:
        t1 = time.monotonic()
        server.stop()
        stopped_s = time.monotonic() - t1
    print(f"postgres start {started_s:.2f} s, stop {stopped_s:.2f} s")

    assert not server.is_running()
    assert _port_is_free(server.port)
    server.stop()  # idempotent
    assert not server.is_running()


def test_context_manager_restarts_an_existing_cluster(pg_dir: Path) -> None:
    with Postgres(pg_dir / "pg") as server:
        server.new_database("t_kept")
        server.start()  # already running: a no-op
    assert not server.is_running()
    # Same run_dir, (most likely) another port: the cluster and its database are reused.
    again = Postgres(pg_dir / "pg")
    with again:
        assert again.is_running()
        with pytest.raises(RuntimeError, match="already exists"):
            again.new_database("t_kept")
    assert not again.is_running()
    assert _port_is_free(again.port)
    again.stop()
