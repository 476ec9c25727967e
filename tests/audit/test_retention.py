"""Retention (`gateway.audit.retention`) on SQLite and PostgreSQL: old shipped records go in batches, recent ones
and unshipped ones stay."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from gateway.audit.retention import DAY_S, AuditRetention
from gateway.store.audit import AuditRow, AuditStore
from gateway.store.db import create_engine, migrate


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield AuditStore(engine)
    await engine.dispose()


def row(age_days: float, n: int) -> AuditRow:
    return AuditRow(recorded_at=time.time() - age_days * DAY_S, request_id=f"r{n}", event="query", outcome=0,
                    patient_id="PAT-1", study_uid=None, subject="alice", record="{}")


async def test_a_pass_deletes_old_shipped_records_in_batches_and_keeps_the_rest(store: AuditStore) -> None:
    old = await store.add_many([row(40, n) for n in range(7)])
    recent = await store.add_many([row(10, n) for n in range(7, 9)])
    unshipped_old = await store.add_many([row(40, 9)])
    claimed = await store.claim_unshipped("s", 8, lease_s=5)  # the 7 old ones and one recent one
    await store.shipped("s", [c.id for c in claimed])
    assert await AuditRetention(store=store, days=30, batch=3).purge() == 7
    left = [s.id for s in await store.search(patient_id=None, since=None, until=None, limit=50)]
    assert left == sorted(recent + unshipped_old)
    assert not set(old) & set(left)
    assert await AuditRetention(store=store, days=30, batch=3).purge() == 0
