"""Stored new-exam events and their deliveries: an outbox in SQLite or PostgreSQL.

An event and one pending delivery per subscriber are written in one transaction, so an event the gateway has
acknowledged is never without its deliveries. Workers claim due deliveries with a lease (`lease_owner`,
`lease_until`): on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so replicas never claim the same row; on SQLite the
write lock taken at BEGIN serialises claims. A lease left by a killed worker expires and the delivery is claimed
again (at-least-once). Times are Unix seconds (doubles), the same on both databases.

An event keeps two forms: `body`, its fields as the gateway parsed them (JSON text; what the events API shows and
what deduplication compares), and `raw_body`, the bytes the PACS posted, exactly (what subscribers receive).
`raw_body` is NULL for events the gateway built itself (the Orthanc change feed) and for events stored before the
column existed (migration 0002); those are delivered as `body`, as they always were.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

_ID = BigInteger().with_variant(Integer(), "sqlite")
_SECONDS = Float(precision=53)
metadata = MetaData()
events = Table(
    "events", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("received_at", _SECONDS, nullable=False),
    Column("origin", String(32), nullable=False),
    Column("source_id", String(256), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("patient_id", String(64)),
    Column("event_type", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column("raw_body", LargeBinary),  # migration 0002
)
deliveries = Table(
    "deliveries", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("event_id", _ID, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("subscriber", String(2048), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", _SECONDS, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", _SECONDS),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("delivered_at", _SECONDS),
    Column("updated_at", _SECONDS, nullable=False),
)
feed_positions = Table(
    "feed_positions", metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", _SECONDS, nullable=False),
)
# The studies a feed named: `pending` until announced, then `announced` (migration 0004).
STUDY_PENDING, STUDY_ANNOUNCED = "pending", "announced"
feed_studies = Table(
    "feed_studies", metadata,
    Column("feed", String(64), primary_key=True),
    Column("study", String(128), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("seen_at", _SECONDS, nullable=False),
    Column("updated_at", _SECONDS, nullable=False),
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to store: its parsed body, the bytes to deliver when they are not that body's JSON, and the fields
    it is searched by."""

    origin: str  # "callback" or "orthanc-changes"
    source_id: str
    study_instance_uid: str
    patient_id: str | None
    event_type: str
    body: dict[str, Any]  # the fields as parsed (counts as numbers, PatientSex in upper case, ...)
    raw: bytes | None = None  # the body exactly as received; None when the gateway built the event itself

    def encoded(self) -> str:
        """The body as stored (`events.body`, `StoredEvent.body_json`): compact JSON, non-ASCII as is."""
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":"))

    def dedup_key(self) -> str:
        """The same source, study, event type and parsed body is the same event: key order, white space and the
        spellings the parse accepts ("239" for 239, "f" for "F") aside. The bytes are not part of the key, so a
        PACS that sends an event again, formatted otherwise, does not notify subscribers twice; the bytes of the
        first arrival are kept. (The key is computed as before the raw body was kept: events stored earlier are
        still found.)"""
        canonical = json.dumps([self.source_id, self.study_instance_uid, self.event_type, self.body],
                               ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery a worker holds the lease of: attempt number `attempt` of sending `body` to `subscriber` (the
    event's bytes as received, or its parsed body's JSON when none were kept)."""

    delivery_id: int
    event_id: int
    subscriber: str
    attempt: int
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    received_at: float
    origin: str
    source_id: str
    study_instance_uid: str
    patient_id: str | None
    event_type: str
    # The parsed fields as stored: the JSON text `NewEvent.encoded` wrote, not parsed again (read back, one Python
    # object per value would cost many times the text).
    body_json: str
    raw: bytes | None  # as received; None for events the gateway built, or stored before raw bodies were kept
    deliveries: list[dict[str, Any]]


class EventStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    # -- writing events -------------------------------------------------------------------------------------------

    async def add(self, event: NewEvent, subscribers: list[str]) -> tuple[int, bool]:
        """Store `event` with a pending delivery per subscriber; (id, False) when the same event is already stored."""
        [(event_id, created)] = await self.add_many([event], subscribers)
        return event_id, created

    async def add_many(self, new: list[NewEvent], subscribers: list[str],
                       feed: tuple[str, int] | None = None) -> list[tuple[int, bool]]:
        """Store events (and optionally a feed position) in one transaction. A concurrent insert of the same event
        makes the transaction fail on the unique key; it is then retried, and finds the event stored."""
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    out = [await self._insert(conn, event, subscribers) for event in new]
                    if feed is not None:
                        await self._set_position(conn, *feed)
                    return out
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _insert(self, conn: AsyncConnection, event: NewEvent, subscribers: list[str]) -> tuple[int, bool]:
        key = event.dedup_key()
        existing = (await conn.execute(select(events.c.id).where(events.c.dedup_key == key))).scalar()
        if existing is not None:
            return int(existing), False
        now = time.time()
        result = await conn.execute(events.insert().values(
            received_at=now, origin=event.origin, source_id=event.source_id,
            study_instance_uid=event.study_instance_uid, patient_id=event.patient_id, event_type=event.event_type,
            body=event.encoded(), dedup_key=key, raw_body=event.raw,
        ))
        primary_key = result.inserted_primary_key
        assert primary_key is not None
        event_id = int(primary_key[0])
        if subscribers:
            await conn.execute(deliveries.insert(), [
                {"event_id": event_id, "subscriber": url, "state": PENDING, "attempts": 0, "next_attempt_at": now,
                 "updated_at": now}
                for url in subscribers
            ])
        return event_id, True

    # -- feed positions -------------------------------------------------------------------------------------------

    async def position(self, name: str) -> int | None:
        async with self.engine.connect() as conn:
            value = (await conn.execute(select(feed_positions.c.position)
                                        .where(feed_positions.c.name == name))).scalar()
        return None if value is None else int(value)

    async def set_position(self, name: str, position: int) -> None:
        async with self.engine.begin() as conn:
            await self._set_position(conn, name, position)

    async def _set_position(self, conn: AsyncConnection, name: str, position: int) -> None:
        now = time.time()
        updated = await conn.execute(update(feed_positions).where(feed_positions.c.name == name)
                                     .values(position=position, updated_at=now))
        if updated.rowcount == 0:
            await conn.execute(feed_positions.insert().values(name=name, position=position, updated_at=now))

    # -- studies a feed named, until announced ----------------------------------------------------------------------

    async def note_studies(self, feed: str, studies: list[str], position: int, *, touch: bool = False) -> int:
        """Remember `studies` as pending (those already announced are left as they are; with `touch`, the pending
        ones among them are marked as changed now) and move the feed to `position`, in one transaction; how many
        were new."""
        now = time.time()
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    known = set() if not studies else set((await conn.execute(
                        select(feed_studies.c.study).where(feed_studies.c.feed == feed,
                                                          feed_studies.c.study.in_(studies)))).scalars())
                    new = list(dict.fromkeys(study for study in studies if study not in known))
                    if new:
                        await conn.execute(feed_studies.insert(), [
                            {"feed": feed, "study": study, "state": STUDY_PENDING, "seen_at": now, "updated_at": now}
                            for study in new])
                    if touch and known:
                        await conn.execute(update(feed_studies).where(
                            feed_studies.c.feed == feed, feed_studies.c.study.in_(known),
                            feed_studies.c.state == STUDY_PENDING).values(updated_at=now))
                    await self._set_position(conn, feed, position)
                    return len(new)
            except IntegrityError:  # another replica noted one of them meanwhile: read again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def pending_studies(self, feed: str, limit: int, after: str = "", quiet_since: float | None = None
                              ) -> list[str]:
        """Up to `limit` of the feed's studies not yet announced, in the order of their ids, after `after`; with
        `quiet_since`, only those not changed since then."""
        query = (select(feed_studies.c.study)
                 .where(feed_studies.c.feed == feed, feed_studies.c.state == STUDY_PENDING,
                        feed_studies.c.study > after)
                 .order_by(feed_studies.c.study).limit(limit))
        if quiet_since is not None:
            query = query.where(feed_studies.c.updated_at <= quiet_since)
        async with self.engine.connect() as conn:
            return [str(s) for s in (await conn.execute(query)).scalars()]

    async def announce_study(self, feed: str, study: str, event: NewEvent | None, subscribers: list[str], *,
                             quiet_since: float | None = None) -> bool:
        """Mark a pending study announced and store its event, in one transaction; with no event (the study is gone
        from the PACS), forget it. False when it was no longer pending (another replica took it), or, with
        `quiet_since`, changed since then: nothing stored."""
        now = time.time()
        async with self.engine.begin() as conn:
            pending = (feed_studies.c.feed == feed, feed_studies.c.study == study,
                       feed_studies.c.state == STUDY_PENDING,
                       *((feed_studies.c.updated_at <= quiet_since,) if quiet_since is not None else ()))
            if event is None:
                gone = await conn.execute(delete(feed_studies).where(*pending))
                return bool(gone.rowcount)
            marked = await conn.execute(update(feed_studies).where(*pending)
                                        .values(state=STUDY_ANNOUNCED, updated_at=now))
            if not marked.rowcount:
                return False
            await self._insert(conn, event, subscribers)
        return True

    # -- deliveries -----------------------------------------------------------------------------------------------

    async def claim(self, owner: str, subscriber: str, limit: int, lease_s: float) -> list[Claim]:
        """Lease up to `limit` due deliveries to `subscriber`; each claim counts as an attempt."""
        now = time.time()
        async with self.engine.begin() as conn:
            due = (select(deliveries.c.id)
                   .where(deliveries.c.subscriber == subscriber, deliveries.c.state == PENDING,
                          deliveries.c.next_attempt_at <= now,
                          or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now))
                   .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
                   .limit(limit))
            if self._postgres:
                due = due.with_for_update(skip_locked=True)
            ids = [int(row) for row in (await conn.execute(due)).scalars()]
            if not ids:
                return []
            await conn.execute(update(deliveries).where(deliveries.c.id.in_(ids)).values(
                lease_owner=owner, lease_until=now + lease_s, attempts=deliveries.c.attempts + 1, updated_at=now))
            rows = (await conn.execute(
                select(deliveries.c.id, deliveries.c.event_id, deliveries.c.attempts, events.c.body,
                       events.c.raw_body)
                .join(events, events.c.id == deliveries.c.event_id)
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            )).all()
        return [Claim(int(r.id), int(r.event_id), subscriber, int(r.attempts),
                      bytes(r.raw_body) if r.raw_body is not None else r.body.encode()) for r in rows]

    async def delivered(self, claim: Claim, status: int) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            # Delivered is final and true whoever holds the lease now.
            await conn.execute(update(deliveries).where(deliveries.c.id == claim.delivery_id,
                                                        deliveries.c.state == PENDING).values(
                state=DELIVERED, delivered_at=now, last_status=status, last_error=None, lease_owner=None,
                lease_until=None, updated_at=now))

    async def attempt_failed(self, claim: Claim, owner: str, *, status: int | None, error: str,
                             retry_at: float | None) -> None:
        """Record a failed attempt: retry at `retry_at`, or mark the delivery failed when it is None."""
        now = time.time()
        values: dict[str, Any] = {"last_status": status, "last_error": error[:1000], "lease_owner": None,
                                  "lease_until": None, "updated_at": now}
        if retry_at is None:
            values["state"] = FAILED
        else:
            values["next_attempt_at"] = retry_at
        async with self.engine.begin() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id == claim.delivery_id,
                                                        deliveries.c.lease_owner == owner,
                                                        deliveries.c.state == PENDING).values(**values))

    async def release(self, owner: str, delivery_ids: list[int]) -> None:
        """Give back leases of deliveries whose attempt was interrupted (shutdown): due again at once."""
        if not delivery_ids:
            return
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id.in_(delivery_ids),
                                                        deliveries.c.lease_owner == owner).values(
                lease_owner=None, lease_until=None, next_attempt_at=now, updated_at=now,
                last_error="interrupted by a shutdown"))

    # -- reading ----------------------------------------------------------------------------------------------------

    async def list_events(self, *, study_instance_uid: str | None = None, patient_id: str | None = None,
                          since: float | None = None, limit: int = 100, offset: int = 0,
                          after: StoredEvent | None = None) -> list[StoredEvent]:
        """Events newest first (`received_at`, then `id`, descending). `after`: only those that come after that
        event in this order, to read a long listing in batches (keyset paging: events stored meanwhile are newer,
        so a batch neither repeats nor skips one, as offsets would)."""
        conditions = []
        if study_instance_uid is not None:
            conditions.append(events.c.study_instance_uid == study_instance_uid)
        if patient_id is not None:
            conditions.append(events.c.patient_id == patient_id)
        if since is not None:
            conditions.append(events.c.received_at >= since)
        if after is not None:
            conditions.append(or_(events.c.received_at < after.received_at,
                                  and_(events.c.received_at == after.received_at, events.c.id < after.id)))
        query = (select(events).where(and_(true(), *conditions))
                 .order_by(events.c.received_at.desc(), events.c.id.desc()).limit(limit).offset(offset))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            return await self._with_deliveries(conn, rows)

    async def get_event(self, event_id: int) -> StoredEvent | None:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(events).where(events.c.id == event_id))).all()
            found = await self._with_deliveries(conn, rows)
        return found[0] if found else None

    async def _with_deliveries(self, conn: AsyncConnection, rows: Sequence[Any]) -> list[StoredEvent]:
        if not rows:
            return []
        ids = [row.id for row in rows]
        by_event: dict[int, list[dict[str, Any]]] = {int(i): [] for i in ids}
        for d in (await conn.execute(select(deliveries).where(deliveries.c.event_id.in_(ids))
                                     .order_by(deliveries.c.id))).all():
            by_event[int(d.event_id)].append({
                "subscriber": d.subscriber, "state": d.state, "attempts": d.attempts,
                "lastStatus": d.last_status, "lastError": d.last_error,
                "nextAttemptAt": d.next_attempt_at if d.state == PENDING else None,
                "deliveredAt": d.delivered_at,
            })
        return [StoredEvent(int(r.id), float(r.received_at), r.origin, r.source_id, r.study_instance_uid,
                            r.patient_id, r.event_type, r.body,
                            None if r.raw_body is None else bytes(r.raw_body), by_event[int(r.id)]) for r in rows]

    async def redeliver(self, event_id: int, subscribers: list[str]) -> bool:
        """Send the event again to every current subscriber (attempts start over); False when it does not exist."""
        now = time.time()
        async with self.engine.begin() as conn:
            if (await conn.execute(select(events.c.id).where(events.c.id == event_id))).scalar() is None:
                return False
            known = set((await conn.execute(select(deliveries.c.subscriber)
                                            .where(deliveries.c.event_id == event_id))).scalars())
            await conn.execute(update(deliveries).where(deliveries.c.event_id == event_id,
                                                        deliveries.c.subscriber.in_(subscribers)).values(
                state=PENDING, attempts=0, next_attempt_at=now, lease_owner=None, lease_until=None,
                last_error=None, last_status=None, delivered_at=None, updated_at=now))
            missing = [url for url in subscribers if url not in known]
            if missing:
                await conn.execute(deliveries.insert(), [
                    {"event_id": event_id, "subscriber": url, "state": PENDING, "attempts": 0,
                     "next_attempt_at": now, "updated_at": now} for url in missing])
        return True

    async def counts(self) -> dict[str, int]:
        """Deliveries per state, every state named (for metrics and tests)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries.c.state, func.count()).group_by(deliveries.c.state))).all()
        return {PENDING: 0, DELIVERED: 0, FAILED: 0, **{str(state): int(count) for state, count in rows}}
