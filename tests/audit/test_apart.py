"""The shipper's own process (`gateway.audit.apart`), against a real rsyslogd, on SQLite and PostgreSQL: records
the journal commits are shipped by the child once woken, at a lower priority than the gateway's; a child that dies
is started again and ships what came meanwhile; a child whose gateway went away (the pipe's end of file, as after
a `kill -9`) exits by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from gateway.audit.apart import NICENESS, ShipperConfig, ShipperProcess
from gateway.audit.journal import AuditJournal
from gateway.audit.shipper import ShipPolicy, SyslogRendering
from gateway.store.audit import AuditStore
from gateway.store.db import create_engine, migrate
from tests.audit.test_shipper_syslog import patient_ids, record, row
from tests.support.rsyslog import Rsyslog

POLICY = ShipPolicy(batch=20, lease_s=2.0, poll_s=5.0, gather_s=0.01, retry_base_s=0.1, retry_max_s=0.4)


@pytest.fixture
async def journal(database_url: str) -> AsyncIterator[AuditJournal]:
    engine = create_engine(database_url)
    await migrate(engine)
    store = AuditStore(engine)
    journal = AuditJournal(store=store)
    await journal.start()
    yield journal
    await journal.stop()
    await store.close()
    await engine.dispose()


def config(database_url: str, rsyslog: Rsyslog) -> ShipperConfig:
    return ShipperConfig(database_url=database_url, syslog_url=rsyslog.url,
                         rendering=SyslogRendering(source_id="gw-test", hostname="gw.example.org"),
                         policy=POLICY, log_level="warning", log_format="json")


async def write(journal: AuditJournal, numbers: range) -> None:
    await asyncio.gather(*(journal.write(row(record(n, "PAT-1"))) for n in numbers))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too, but for its parent's wait
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_child_ships_what_was_committed_and_is_started_again_when_it_dies(
        journal: AuditJournal, database_url: str, rsyslog: Rsyslog) -> None:
    shipper = ShipperProcess(config(database_url, rsyslog))
    journal._on_commit = shipper.wake
    await shipper.start()
    try:
        first = shipper.pid
        assert first is not None
        assert first != os.getpid()
        await write(journal, range(10))
        await asyncio.to_thread(rsyslog.wait_for, 10, 30.0)  # woken by the commits, not the 5 s poll
        # Below the serving process: shipping takes the CPU the requests leave.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, first) == min(19, ours + NICENESS)
        os.kill(first, signal.SIGKILL)
        await write(journal, range(10, 15))  # committed while no child runs
        received = await asyncio.to_thread(rsyslog.wait_for, 15, 30.0)
        assert shipper.starts == 2
        assert shipper.pid not in (None, first)
    finally:
        await shipper.stop()
    assert {patient_ids(m.raw)[0] for m in received} == {f"req-{n}" for n in range(15)}
    assert shipper.pid is None


async def test_a_child_whose_gateway_went_away_exits_by_itself(database_url: str, rsyslog: Rsyslog,
                                                               journal: AuditJournal) -> None:
    shipper = ShipperProcess(config(database_url, rsyslog))
    await shipper.start()
    pid = shipper.pid
    assert pid is not None
    try:
        await asyncio.sleep(1.0)  # the child is up (or starting)
        assert alive(pid)
        shipper._close_pipe()  # what the kernel does to the pipe when the gateway is killed
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, "the child outlived its gateway"
            await asyncio.sleep(0.1)
    finally:
        await shipper.stop()
