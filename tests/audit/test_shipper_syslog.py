"""The whole shipping path against a real rsyslogd: records stored by the group commit, shipped by the shipper as
PS3.15 A.5.1 XML in RFC 5424 frames over TCP, read back from what rsyslog wrote, and shipped again after the
repository was down, so that every stored record arrives (at least once)."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gateway.audit.journal import AuditJournal
from gateway.audit.records import (
    Action,
    Actor,
    AlertType,
    AuditRecord,
    EventKind,
    Outcome,
    Peer,
    StudyRef,
)
from gateway.audit.shipper import AuditShipper, ShipPolicy, SyslogRendering
from gateway.audit.syslog import BOM, SyslogSender
from gateway.store.audit import AuditRow, AuditStore
from gateway.store.db import create_engine, migrate
from tests.support.rsyslog import Rsyslog

POLICY = ShipPolicy(batch=20, lease_s=2.0, poll_s=0.05, gather_s=0.01, retry_base_s=0.1, retry_max_s=0.4)
GATEWAY = Peer(user_id="dicom-gateway", address="gw.example.org")


def record(n: int, patient: str) -> AuditRecord:
    when = datetime(2026, 12, 1, 14, 0, n % 60, tzinfo=UTC)
    actor = Actor(subject=f"user-{n}", roles=("patient",), issuer="https://idp.example.org", address="10.0.0.7")
    if n % 3 == 2:  # every third one a refusal: another patient's study named
        return AuditRecord(kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE,
                           when=when, request_id=f"req-{n}", actor=actor, peer=GATEWAY, patient_id=patient,
                           resource=f"/exams/studies/1.2.{n}/series", alert=AlertType.USE_OF_RESTRICTED_FUNCTION,
                           outcome_description="not this patient's study")
    return AuditRecord(kind=EventKind.INSTANCES_ACCESSED, action=Action.READ, outcome=Outcome.SUCCESS, when=when,
                       request_id=f"req-{n}", actor=actor, peer=GATEWAY, patient_id=patient,
                       studies=(StudyRef(f"1.2.{n}"),))


def row(audit: AuditRecord) -> AuditRow:
    return AuditRow(recorded_at=audit.when.timestamp(), request_id=audit.request_id, event=audit.kind.name.lower(),
                    outcome=int(audit.outcome), patient_id=audit.patient_id,
                    study_uid=audit.studies[0].study_uid if audit.studies else None, subject=audit.actor.subject,
                    record=audit.to_json())


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield AuditStore(engine)
    await engine.dispose()


def patient_ids(received: bytes) -> tuple[str, str]:
    """(the request id, the patient's ParticipantObjectID) of one message as rsyslog wrote it."""
    body = received[received.index(BOM) + len(BOM):]
    root = ET.fromstring(body)  # noqa: S314 - our own XML, read back in a test
    patient = next(o for o in root.iter("ParticipantObjectIdentification")
                   if o.find("ParticipantObjectIDTypeCode") is not None
                   and o.find("ParticipantObjectIDTypeCode").get("csd-code") == "2")  # type: ignore[union-attr]
    detail = {d.get("type"): base64.b64decode(d.get("value", "")).decode()  # xs:base64Binary (A.5.1)
              for d in patient.iter("ParticipantObjectDetail")}
    return detail["RequestID"], str(patient.get("ParticipantObjectID"))


async def test_every_stored_record_reaches_the_repository_even_across_an_outage(
        store: AuditStore, rsyslog: Rsyslog) -> None:
    journal = AuditJournal(store=store)
    sender = SyslogSender(url=rsyslog.url, timeout_s=2.0)
    shipper = AuditShipper(store=store, render=SyslogRendering(source_id="gw-test", hostname="gw.example.org"),
                           send=sender.send, policy=POLICY)
    await journal.start()
    await shipper.start()
    try:
        written = await asyncio.gather(*(journal.write(row(record(n, f"PAT-{n % 4}"))) for n in range(30)))
        shipper.wake()
        await asyncio.to_thread(rsyslog.wait_for, 30, 10.0)
        rsyslog.stop()  # the repository goes away; records keep being stored, and wait
        later = await asyncio.gather(*(journal.write(row(record(n, f"PAT-{n % 4}"))) for n in range(30, 45)))
        shipper.wake()
        await asyncio.sleep(0.5)
        rsyslog.start()
        received = await asyncio.to_thread(rsyslog.wait_for, 45, 15.0)
    finally:
        await shipper.stop()
        await journal.stop()
        await sender.aclose()
    assert len(written) + len(later) == 45
    seen = [patient_ids(message.raw) for message in received]
    assert {request for request, _ in seen} == {f"req-{n}" for n in range(45)}  # each one arrived
    assert all(patient == f"PAT-{int(request.split('-')[1]) % 4}" for request, patient in seen)
    pri = {message.pri for message in received}
    assert pri == {"85", "84"}  # facility 10: notice for the accesses, warning for the refusals
    assert await store.claim_unshipped("check", 100, 5.0) == []  # all marked shipped
