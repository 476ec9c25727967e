"""A store created by the version before raw bodies were kept (Alembic revision 0001) is upgraded at start, and the
events in it are still read, found again and delivered, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from gateway.store.db import MIGRATIONS, create_engine
from tests.callbacks.test_callbacks import SEED, event, gateway, pacs
from tests.support.exams_support import clinician
from tests.support.receivers import Receiver, receivers, wait_until

OLD_EVENT: dict[str, Any] = {**SEED, "StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.77", "PatientSex": "F"}


def _upgrade(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def old_dedup_key(body: dict[str, Any]) -> str:
    """The key revision 0001's gateway wrote (written out here: the upgrade must keep finding these events)."""
    canonical = json.dumps([body["SourceID"], body["StudyInstanceUID"], body["EventType"], body],
                           ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def store_as_revision_0001(database_url: str, subscriber: str) -> tuple[int, bytes]:
    """A store at revision 0001 holding one event, pending for `subscriber`, as that version wrote it."""
    engine = create_engine(database_url)
    body = json.dumps(OLD_EVENT, ensure_ascii=False, separators=(",", ":"))
    now = time.time()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, "0001")
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO events (received_at, origin, source_id, study_instance_uid, patient_id, event_type,"
                " body, dedup_key) VALUES (:now, 'callback', :source, :study, :patient, 'COMPLETED', :body, :key)"),
                {"now": now, "source": OLD_EVENT["SourceID"], "study": OLD_EVENT["StudyInstanceUID"],
                 "patient": OLD_EVENT["PatientID"], "body": body, "key": old_dedup_key(OLD_EVENT)})
            event_id = int((await conn.execute(text("SELECT max(id) FROM events"))).scalar_one())
            await conn.execute(text(
                "INSERT INTO deliveries (event_id, subscriber, state, attempts, next_attempt_at, updated_at)"
                " VALUES (:event, :url, 'pending', 0, :now, :now)"), {"event": event_id, "url": subscriber, "now": now})
    finally:
        await engine.dispose()
    return event_id, body.encode()


NEWEST = "0004"  # the newest revision in gateway/store/migrations/versions (0004: the studies a feed named)

async def schema_revision(database_url: str) -> tuple[str, set[str]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            columns = await conn.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("events")})
    finally:
        await engine.dispose()
    return str(revision), columns


async def test_events_stored_by_the_previous_version_survive_the_upgrade(database_url: str) -> None:
    with receivers(Receiver()) as [subscriber]:
        old_id, old_bytes = await store_as_revision_0001(database_url, subscriber.url)
        assert (await schema_revision(database_url))[0] == "0001"
        async with gateway(database_url, [subscriber]) as client:  # the lifespan migrates to the newest revision
            revision, columns = await schema_revision(database_url)
            assert revision == NEWEST  # 0002 added raw_body; later revisions leave events alone
            assert "raw_body" in columns
            # Still read, in the same layout: no bytes of its own, so rawBody is null.
            found = (await client.get(f"/new-exam-callback/events/{old_id}", headers=clinician())).json()
            assert found["event"] == OLD_EVENT
            assert found["rawBody"] is None
            # Still delivered, as that version would have: its stored JSON.
            await wait_until(lambda: bool(subscriber.of(str(old_id))))
            assert subscriber.of(str(old_id))[0].body == old_bytes
            # Still found again: the same event posted after the upgrade is not stored (nor delivered) twice.
            again = await client.post("/new-exam-callback", content=json.dumps(OLD_EVENT, indent=1),
                                      headers={"Content-Type": "text/plain", **pacs()})
            assert again.status_code == 204, again.text
            assert again.headers["x-event-id"] == str(old_id)
            # New events beside it keep their bytes.
            raw = json.dumps(event(5), indent=3).encode()
            new = await client.post("/new-exam-callback", content=raw,
                                    headers={"Content-Type": "application/x-www-form-urlencoded", **pacs()})
            assert new.status_code == 204, new.text
            listed = (await client.get("/new-exam-callback/events", headers=clinician())).json()
            assert [(e["id"], e["rawBody"]) for e in listed] == [(int(new.headers["x-event-id"]), raw.decode()),
                                                                 (old_id, None)]
            await wait_until(lambda: bool(subscriber.of(new.headers["x-event-id"])))
            assert subscriber.of(new.headers["x-event-id"])[0].body == raw
            assert len(subscriber.of(str(old_id))) == 1
        async with gateway(database_url, [subscriber]):  # a second start: the migration is not run twice
            assert (await schema_revision(database_url))[0] == NEWEST
