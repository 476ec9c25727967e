"""The audit shipper (`gateway.audit.shipper`) over the real store, on SQLite and PostgreSQL: every record is sent
at least once, in order, failed sends are retried later, and a shipper that dies mid-batch loses nothing.

`send` here is the transport's place: a list that takes the messages, or fails, or never returns. The syslog
transport itself is tested against a real rsyslog in test_syslog.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.shipper import AuditShipper, ShipPolicy
from gateway.store.audit import AuditRow, AuditStore, StoredAudit
from gateway.store.db import create_engine, migrate

ROW = AuditRow(recorded_at=1000.0, request_id="r", event="query", outcome=0, patient_id="PAT-1", study_uid=None,
               subject="alice", record="{}")
POLICY = ShipPolicy(batch=10, lease_s=0.5, poll_s=0.05, gather_s=0.01, retry_base_s=0.2, retry_max_s=1.0)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine: AsyncEngine = create_engine(database_url)
    await migrate(engine)
    yield AuditStore(engine)
    await engine.dispose()


def render(record: StoredAudit) -> bytes:
    return f"{record.id}:{record.row.request_id}".encode()


async def add(store: AuditStore, count: int) -> list[int]:
    return await store.add_many([replace(ROW, request_id=f"r{n}") for n in range(count)])


async def until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_every_record_is_shipped_once_in_order_in_batches(store: AuditStore) -> None:
    ids = await add(store, 25)
    sent: list[list[bytes]] = []

    async def send(messages: list[bytes]) -> None:
        sent.append(messages)

    shipper = AuditShipper(store=store, render=render, send=send, policy=POLICY)
    await shipper.start()
    try:
        await until(lambda: sum(map(len, sent)) == 25)
    finally:
        await shipper.stop()
    assert [len(batch) for batch in sent] == [10, 10, 5]
    assert [m for batch in sent for m in batch] == [f"{i}:r{n}".encode() for n, i in enumerate(ids)]
    assert await store.claim_unshipped("other", 100, 5) == []  # all marked shipped


async def test_a_failed_send_is_retried_later_and_nothing_is_lost(store: AuditStore) -> None:
    await add(store, 3)
    attempts: list[float] = []
    delivered: list[bytes] = []

    async def send(messages: list[bytes]) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise ConnectionRefusedError("the repository is down")
        delivered.extend(messages)

    shipper = AuditShipper(store=store, render=render, send=send, policy=POLICY)
    await shipper.start()
    try:
        await until(lambda: len(delivered) == 3)
    finally:
        await shipper.stop()
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.2 - 0.05  # the backoff: 0.2 s, then 0.4 s
    assert attempts[2] - attempts[1] >= 0.4 - 0.05


async def test_a_shipper_that_dies_mid_batch_leaves_its_records_to_the_next(store: AuditStore) -> None:
    await add(store, 4)
    stuck = asyncio.Event()

    async def hang(messages: list[bytes]) -> None:
        stuck.set()
        await asyncio.sleep(3600)

    first = AuditShipper(store=store, render=render, send=hang, policy=POLICY)
    await first.start()
    await asyncio.wait_for(stuck.wait(), 5)
    await first.stop()  # killed while sending: the batch was never marked shipped
    delivered: list[bytes] = []

    async def send(messages: list[bytes]) -> None:
        delivered.extend(messages)

    second = AuditShipper(store=store, render=render, send=send, policy=POLICY)
    await second.start()
    try:
        await until(lambda: len(delivered) == 4)  # after the first one's lease (0.5 s) ran out
    finally:
        await second.stop()

