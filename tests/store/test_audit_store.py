"""The stored audit trail (`gateway.store.audit`) and its group commit (`gateway.audit.journal`), on SQLite and
PostgreSQL: batches share one transaction, each writer learns its own id, a failing store fails every writer of the
batch, shipping leases are exclusive and expire, retention keeps what was not shipped. On SQLite, where a batch is
committed: on the loop without an fsync by default, in the writer's thread when the lock is held or when
AUDIT_DURABILITY=power asks for the sync."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.journal import AuditJournal, AuditUnavailable
from gateway.store.audit import AuditRow, AuditStore
from gateway.store.db import InlineSqlite, SqliteWriter, create_engine, migrate

ROW = AuditRow(recorded_at=0.0, request_id="r0", event="query", outcome=0, patient_id="PAT-1",
               study_uid="1.2.3", subject="alice", record='{"event":"query"}')


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def row(n: int, **changes: object) -> AuditRow:
    return replace(ROW, recorded_at=1000.0 + n, request_id=f"r{n}", **changes)  # type: ignore[arg-type]


async def test_records_are_found_by_patient_and_time_oldest_first(engine: AsyncEngine) -> None:
    store = AuditStore(engine)
    ids = await store.add_many([row(1), row(2, patient_id="PAT-2"), row(3), row(4)])
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    found = await store.search(patient_id="PAT-1", since=1001.5, until=1004.0, limit=10)
    assert [f.row.request_id for f in found] == ["r3"]
    first = await store.search(patient_id="PAT-1", since=None, until=None, limit=2)
    assert [f.row.request_id for f in first] == ["r1", "r3"]
    rest = await store.search(patient_id="PAT-1", since=None, until=None, limit=2, after_id=first[-1].id)
    assert [f.row.request_id for f in rest] == ["r4"]
    assert found[0].row == row(3)


async def test_concurrent_writers_share_commits_and_each_gets_its_own_record(engine: AsyncEngine) -> None:
    journal = AuditJournal(store=AuditStore(engine))
    await journal.start()
    try:
        ids = await asyncio.gather(*(journal.write(row(n)) for n in range(200)))
    finally:
        await journal.stop()
    assert len(set(ids)) == 200
    assert journal.commits < 50  # 200 records, far fewer transactions
    stored = await AuditStore(engine).search(patient_id=None, since=None, until=None, limit=500)
    by_id = {s.id: s.row.request_id for s in stored}
    assert [by_id[i] for i in ids] == [f"r{n}" for n in range(200)]  # each writer was given its own row's id


async def test_a_failing_store_fails_every_writer_of_the_batch_closed(engine: AsyncEngine) -> None:
    store = AuditStore(engine)
    journal = AuditJournal(store=store)
    await journal.start()
    await engine.dispose()
    broken = create_engine("sqlite:////nonexistent-dir-for-audit/x.db")
    journal._store = AuditStore(broken)  # the database goes away under the journal
    try:
        results = await asyncio.gather(*(journal.write(row(n)) for n in range(5)), return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert all(r.status_code == 503 for r in results if isinstance(r, AuditUnavailable))
        journal._store = store  # back: the next records are written again
        assert await journal.write(row(9)) > 0
    finally:
        await journal.stop()
        await broken.dispose()


async def test_a_writer_that_gives_up_does_not_lose_its_record(engine: AsyncEngine) -> None:
    journal = AuditJournal(store=AuditStore(engine))
    await journal.start()
    try:
        waiting = asyncio.create_task(journal.write(row(1)))
        await asyncio.sleep(0)
        waiting.cancel()  # the client went away while its record was being committed
        await asyncio.gather(waiting, return_exceptions=True)
    finally:
        await journal.stop()  # commits what was queued
    stored = await AuditStore(engine).search(patient_id=None, since=None, until=None, limit=10)
    assert [s.row.request_id for s in stored] == ["r1"]


async def test_a_closed_journal_refuses_at_once() -> None:
    journal = AuditJournal(store=AuditStore(create_engine("sqlite://")))
    with pytest.raises(AuditUnavailable):
        await journal.write(ROW)


async def test_shipping_leases_are_exclusive_expire_and_end_when_shipped(engine: AsyncEngine) -> None:
    store = AuditStore(engine)
    await store.add_many([row(n) for n in range(5)])
    first = await store.claim_unshipped("a", 3, lease_s=0.3)
    second = await store.claim_unshipped("b", 10, lease_s=0.3)
    assert len(first) == 3
    assert len(second) == 2
    assert not {c.id for c in first} & {c.id for c in second}
    assert await store.claim_unshipped("c", 10, lease_s=0.3) == []
    await store.shipped("a", [c.id for c in first])
    await store.ship_failed("b", [second[0].id], retry_at=time.time() + 60)
    await asyncio.sleep(0.4)  # b's other lease runs out (b was killed)
    again = await store.claim_unshipped("c", 10, lease_s=5)
    assert [c.id for c in again] == [second[1].id]


async def test_retention_purges_shipped_records_in_batches_and_keeps_unshipped_ones(engine: AsyncEngine) -> None:
    store = AuditStore(engine)
    ids = await store.add_many([row(n) for n in range(6)])
    claimed = await store.claim_unshipped("a", 4, lease_s=5)
    await store.shipped("a", [c.id for c in claimed])
    assert await store.purge_before(cutoff=2000.0, batch=3) == 3
    assert await store.purge_before(cutoff=2000.0, batch=3) == 1
    assert await store.purge_before(cutoff=2000.0, batch=3) == 0  # the two unshipped ones stay, however old
    left = await store.search(patient_id=None, since=None, until=None, limit=10)
    assert [s.id for s in left] == ids[4:]


async def test_a_batch_that_fails_half_way_stores_none_of_it_and_the_next_one_goes_in(engine: AsyncEngine) -> None:
    store = AuditStore(engine)
    try:
        with pytest.raises(Exception, match=r"(?i)not.null"):
            await store.add_many([row(1), replace(row(2), event=None)])  # type: ignore[arg-type] # NOT NULL
        assert await store.search(patient_id=None, since=None, until=None, limit=10) == []
        ids = await store.add_many([row(3)])  # on SQLite, on a new connection: the failed one was discarded
        found = await store.search(patient_id=None, since=None, until=None, limit=10)
        assert [(f.id, f.row.request_id) for f in found] == [(ids[0], "r3")]
    finally:
        await store.close()
        await store.close()  # closing twice is harmless (a lifespan and a test fixture may both close)


# --- SQLite: where a batch is committed (AUDIT_DURABILITY) -----------------------------------------------------------


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()


def _refuse(*_: object) -> NoReturn:
    raise AssertionError("this path must not be taken")


async def test_sqlite_commits_a_batch_on_the_loop_unsynced_by_default(sqlite_engine: AsyncEngine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = AuditStore(sqlite_engine)
    monkeypatch.setattr(SqliteWriter, "insert", _refuse)  # the writer's thread is not used while the lock is free
    try:
        ids = await store.add_many([row(1), row(2)])
        assert len(ids) == 2
        assert store._inline is not None
        assert store._inline._connect().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: no fsync
        assert store._writer is not None  # nor in the thread's transactions (leases, marks, a batch that waited)
        assert await store._writer.run(lambda c: c.exec_driver_sql("PRAGMA synchronous").scalar()) == 1
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(str(sqlite_engine.url.database))) as other:
        assert [r[0] for r in other.execute("SELECT request_id FROM audit_records ORDER BY id")] == ["r1", "r2"]


async def test_a_held_write_lock_sends_the_batch_to_the_writer_thread_and_the_loop_goes_on(
        sqlite_engine: AsyncEngine) -> None:
    store = AuditStore(sqlite_engine)
    holder = sqlite3.connect(str(sqlite_engine.url.database), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer (the callback store, say) holds the lock
        writing = asyncio.create_task(store.add_many([row(1)]))
        started = time.perf_counter()
        await asyncio.sleep(0.2)
        assert time.perf_counter() - started < 0.5  # the loop was not held by the waiting batch
        assert not writing.done()
        holder.execute("COMMIT")
        ids = await asyncio.wait_for(writing, 10)
        assert len(ids) == 1
        found = await store.search(patient_id=None, since=None, until=None, limit=10)
        assert [f.row.request_id for f in found] == ["r1"]
    finally:
        holder.close()
        await store.close()


async def test_power_durability_commits_in_the_writer_thread_synced(sqlite_engine: AsyncEngine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = AuditStore(sqlite_engine, inline=False)
    monkeypatch.setattr(InlineSqlite, "insert", _refuse)
    try:
        assert len(await store.add_many([row(1)])) == 1
        assert store._writer is not None
        synchronous = await store._writer.run(lambda c: c.exec_driver_sql("PRAGMA synchronous").scalar())
        assert synchronous == 2  # FULL: the log is synced before the commit returns
    finally:
        await store.close()


async def test_inline_commits_reach_the_database_file_by_periodic_checkpoints(sqlite_engine: AsyncEngine) -> None:
    path = str(sqlite_engine.url.database)
    store = AuditStore(sqlite_engine)

    def in_the_file_itself() -> int:  # immutable=1 reads the database file alone, not the write-ahead log
        with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM audit_records").fetchone()[0])

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the migration's tables, into the file
    try:
        await store.add_many([row(1)])
        assert in_the_file_itself() == 0  # committed into the log only
        deadline = time.monotonic() + 10
        while in_the_file_itself() < 2:
            assert time.monotonic() < deadline, "no checkpoint"
            await asyncio.sleep(0.3)
            await store.add_many([row(2)])  # a commit a second after the last checkpoint starts one
    finally:
        await store.close()


# --- SQLite: a request alone commits in its own turn of the loop ------------------------------------------------------


def _run_without_yielding(coroutine: object) -> object:
    """Drive `coroutine` by hand: its result if it finished without once handing control back to the event loop."""
    try:
        coroutine.send(None)  # type: ignore[attr-defined]
    except StopIteration as finished:
        return finished.value
    coroutine.close()  # type: ignore[attr-defined]
    raise AssertionError("the write waited for a turn of the event loop")


async def test_a_record_alone_is_committed_in_its_requests_own_turn(sqlite_engine: AsyncEngine) -> None:
    journal = AuditJournal(store=AuditStore(sqlite_engine))
    await journal.start()
    try:
        record_id = _run_without_yielding(journal.write(row(1), alone=True))
        assert isinstance(record_id, int)
        assert journal.commits == 1
        waiting = journal.write(row(2))  # not alone: it joins the next batch, committed by the journal's task
        with pytest.raises(AssertionError, match="waited"):
            _run_without_yielding(waiting)
        assert await journal.write(row(3)) > record_id
    finally:
        await journal.stop()
    stored = await AuditStore(sqlite_engine).search(patient_id=None, since=None, until=None, limit=10)
    assert [s.row.request_id for s in stored] == ["r1", "r2", "r3"]  # r2's writer gave up; its record was kept


async def test_a_record_alone_waits_its_turn_behind_queued_ones_and_a_held_lock(sqlite_engine: AsyncEngine) -> None:
    journal = AuditJournal(store=AuditStore(sqlite_engine))
    await journal.start()
    holder = sqlite3.connect(str(sqlite_engine.url.database), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the lock is another's: the record cannot be committed without waiting
        held = asyncio.create_task(journal.write(row(1), alone=True))
        await asyncio.sleep(0.1)
        assert not held.done()
        behind = asyncio.create_task(journal.write(row(2), alone=True))  # a batch is being committed: it queues
        await asyncio.sleep(0.1)
        holder.execute("COMMIT")
        first, second = await asyncio.wait_for(asyncio.gather(held, behind), 10)
        assert first < second  # committed in the order they came
    finally:
        holder.close()
        await journal.stop()


async def test_a_record_alone_fails_closed_when_the_store_fails(sqlite_engine: AsyncEngine) -> None:
    store = AuditStore(sqlite_engine)
    journal = AuditJournal(store=store)
    await journal.start()
    try:
        assert store._inline is not None
        store._inline._path = "/nonexistent-dir-for-audit/x.db"  # the database goes away under the journal
        store._inline.close()
        with pytest.raises(AuditUnavailable) as refused:
            await journal.write(row(1), alone=True)
        assert refused.value.status_code == 503
    finally:
        await journal.stop()
