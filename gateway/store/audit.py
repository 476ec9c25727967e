"""The stored audit trail: rows written in batches (group commit), read by patient and time, leased for shipping.

A row holds the whole audit record as JSON (`record`) and, beside it, the columns the auditor's search filters on.
Shipping to the audit repository follows the callback outbox (`store.events`): rows are leased (`lease_owner`,
`lease_until`; `FOR UPDATE SKIP LOCKED` on PostgreSQL), marked shipped once the syslog server took them, and a lease
left by a killed gateway expires, so every row is shipped at least once. Times are Unix seconds (doubles).

A batch is one transaction of INSERTs (ids back by RETURNING, in the rows' order); every audited request waits for
the batch that holds its record. On SQLite a batch is committed on the event loop itself without an fsync
(`store.db.InlineSqlite`, `AUDIT_DURABILITY=process`, the default), or, when another connection holds the write lock
or `AUDIT_DURABILITY=power`, in `store.db.SqliteWriter`'s thread (synced to the disk). The other write transactions
(leases, marks, purges) are functions of a synchronous connection, run in that thread; on PostgreSQL everything
runs on the async engine (`run_sync`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import BigInteger, Column, Float, Integer, String, Table, Text, delete, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.db import InlineSqlite, SqliteBusy, SqliteWriter, T
from gateway.store.events import metadata

log = structlog.get_logger(__name__)
PENDING, SHIPPED = "pending", "shipped"
_ID = BigInteger().with_variant(Integer(), "sqlite")
_SECONDS = Float(precision=53)
audit_records = Table(
    "audit_records", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("recorded_at", _SECONDS, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("event", String(32), nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("patient_id", String(64)),
    Column("study_uid", String(64)),
    Column("subject", String(256)),
    Column("record", Text, nullable=False),
    Column("ship_state", String(16), nullable=False),
    Column("ship_attempts", Integer, nullable=False),
    Column("next_ship_at", _SECONDS, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", _SECONDS),
    Column("shipped_at", _SECONDS),
)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit record as stored: what an auditor's search filters on, and the whole record as JSON."""

    recorded_at: float
    request_id: str
    event: str
    outcome: int  # PS3.15 A.5.3 EventOutcomeIndicator: 0 success, 4, 8, 12 failures
    patient_id: str | None
    study_uid: str | None
    subject: str | None
    record: str


@dataclass(frozen=True, slots=True)
class StoredAudit:
    id: int
    row: AuditRow


class AuditStore:
    def __init__(self, engine: AsyncEngine, *, inline: bool = True) -> None:
        """`inline`: on SQLite, records are committed on the event loop without an fsync (`store.db.InlineSqlite`),
        and the other transactions (leases, marks, purges, a batch that found the lock held) in the writer's thread
        without one either: one of them syncing while it holds the lock would hold up every inline commit behind
        it. Otherwise all of them run in the writer's thread, synced to the disk (`synchronous=FULL`)."""
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._writer = SqliteWriter(engine, synced=not inline) if SqliteWriter.serves(engine) else None
        self._inline = InlineSqlite(str(engine.url.database)) if self._writer is not None and inline else None
        self._checkpointing: asyncio.Task[None] | None = None
        self._checkpointed_at = time.monotonic()

    async def close(self) -> None:
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        if self._inline is not None:
            self._inline.close()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)

    async def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` as one write transaction: on SQLite in the writer's thread, elsewhere on the async engine."""
        if self._writer is not None:
            return await self._writer.run(work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def add_now(self, rows: Sequence[AuditRow]) -> list[int] | None:
        """Store `rows` in one transaction on the caller's thread, if that takes no waiting: on SQLite's inline
        connection with the write lock free. Their ids, in order; None when it cannot be done so (then `add_many`)."""
        if self._inline is None:
            return None
        try:
            ids = self._inline.insert(audit_records, _values(rows))
        except SqliteBusy:
            return None  # another writer holds the lock
        self._checkpoint_soon()
        return ids

    async def add_many(self, rows: Sequence[AuditRow]) -> list[int]:
        """Store `rows` in one transaction (one commit); their ids, in order."""
        ids = self.add_now(rows)
        if ids is not None:
            return ids
        values = _values(rows)
        if self._writer is not None:  # the lock was held, or every commit is synced: wait in the writer's thread
            return await self._writer.insert(audit_records, values)

        def insert(conn: Connection) -> list[int]:
            statement = audit_records.insert().returning(audit_records.c.id, sort_by_parameter_order=True)
            return [int(i) for i in conn.execute(statement, values).scalars()]

        return await self._write(insert)

    def _checkpoint_soon(self) -> None:
        """At most once a second, copy the log the inline commits wrote into the database file, in the writer's
        thread (a checkpoint copies pages and syncs: not on the loop)."""
        if self._writer is None or self._checkpointing is not None or time.monotonic() - self._checkpointed_at < 1.0:
            return
        self._checkpointed_at = time.monotonic()
        self._checkpointing = asyncio.create_task(self._writer.checkpoint())
        self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpointed(self, task: asyncio.Task[None]) -> None:
        self._checkpointing = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The log keeps growing until one succeeds (the next commit tries again): worth a warning, not a failure.
            log.warning("audit_checkpoint_failed", error=type(exc).__name__)

    async def search(self, *, patient_id: str | None, since: float | None, until: float | None, limit: int,
                     after_id: int | None = None) -> list[StoredAudit]:
        """Records oldest first, optionally of one patient and within [since, until); `after_id` pages on."""
        query = select(audit_records).order_by(audit_records.c.id).limit(limit)
        if patient_id is not None:
            query = query.where(audit_records.c.patient_id == patient_id)
        if since is not None:
            query = query.where(audit_records.c.recorded_at >= since)
        if until is not None:
            query = query.where(audit_records.c.recorded_at < until)
        if after_id is not None:
            query = query.where(audit_records.c.id > after_id)
        async with self.engine.connect() as conn:
            found = (await conn.execute(query)).all()
        return [_stored(r) for r in found]

    async def claim_unshipped(self, owner: str, limit: int, lease_s: float) -> list[StoredAudit]:
        """Lease up to `limit` records due for shipping, oldest first; each claim counts as an attempt."""
        now = time.time()
        due = (select(audit_records.c.id)
               .where(audit_records.c.ship_state == PENDING, audit_records.c.next_ship_at <= now,
                      or_(audit_records.c.lease_until.is_(None), audit_records.c.lease_until < now))
               .order_by(audit_records.c.id).limit(limit))
        if self._postgres:
            due = due.with_for_update(skip_locked=True)

        def claim(conn: Connection) -> list[StoredAudit]:
            ids = [int(i) for i in conn.execute(due).scalars()]
            if not ids:
                return []
            conn.execute(update(audit_records).where(audit_records.c.id.in_(ids)).values(
                lease_owner=owner, lease_until=now + lease_s, ship_attempts=audit_records.c.ship_attempts + 1))
            found = conn.execute(select(audit_records).where(audit_records.c.id.in_(ids))
                                 .order_by(audit_records.c.id)).all()
            return [_stored(r) for r in found]

        return await self._write(claim)

    async def shipped(self, owner: str, ids: Sequence[int]) -> None:
        await self._release(owner, ids, ship_state=SHIPPED, shipped_at=time.time())

    async def ship_failed(self, owner: str, ids: Sequence[int], retry_at: float) -> None:
        await self._release(owner, ids, next_ship_at=retry_at)

    async def _release(self, owner: str, ids: Sequence[int], **values: object) -> None:
        """End this owner's lease on `ids`, setting `values`."""
        statement = (update(audit_records)
                     .where(audit_records.c.id.in_(list(ids)), audit_records.c.lease_owner == owner)
                     .values(lease_owner=None, lease_until=None, **values))
        await self._write(lambda conn: conn.execute(statement))

    async def purge_before(self, cutoff: float, batch: int) -> int:
        """Delete up to `batch` shipped records older than `cutoff` (retention); how many went. An unshipped record
        is kept whatever its age: the repository has not got it yet."""
        old = (select(audit_records.c.id)
               .where(audit_records.c.recorded_at < cutoff, audit_records.c.ship_state == SHIPPED)
               .order_by(audit_records.c.id).limit(batch))

        def purge(conn: Connection) -> int:
            ids = [int(i) for i in conn.execute(old).scalars()]
            if ids:
                conn.execute(delete(audit_records).where(audit_records.c.id.in_(ids)))
            return len(ids)

        return await self._write(purge)


def _values(rows: Sequence[AuditRow]) -> list[dict[str, object]]:
    """The rows as the table's columns, each due for shipping now."""
    now = time.time()
    return [{"recorded_at": row.recorded_at, "request_id": row.request_id, "event": row.event,
             "outcome": row.outcome, "patient_id": row.patient_id, "study_uid": row.study_uid,
             "subject": row.subject, "record": row.record, "ship_state": PENDING, "ship_attempts": 0,
             "next_ship_at": now} for row in rows]


def _stored(r: Row[Any]) -> StoredAudit:
    return StoredAudit(int(r.id), AuditRow(float(r.recorded_at), r.request_id, r.event, int(r.outcome), r.patient_id,
                                           r.study_uid, r.subject, r.record))
