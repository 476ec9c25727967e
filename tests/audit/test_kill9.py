"""kill -9 during load, with AUDIT_TRAIL=on (issue 13): every request that got a 2xx has its audit record after a
restart, in the store and at the syslog server. A `dicom-gateway serve` process in front of Orthanc, on SQLite and
PostgreSQL, shipping to a real rsyslogd; four clients search until the gateway is killed mid-load."""

from __future__ import annotations

import asyncio
import base64
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx

from gateway.audit.syslog import BOM
from tests.conftest import gateway_env
from tests.support.dicom_factory import generated
from tests.support.exams_support import SECRET, clinician, new_patient_id, patient, token
from tests.support.orthanc import Orthanc
from tests.support.processes import GatewayProcess
from tests.support.rsyslog import Rsyslog

AUDITOR = {"Authorization": f"Bearer {token('auditor')}"}


def load(url: str, patient_id: str, answered: list[str], stop: threading.Event) -> None:
    """Search as the patient until told to stop or the gateway dies; the request id of every 2xx goes in `answered`."""
    with httpx.Client(base_url=url, timeout=10, headers=patient(patient_id)) as client:
        while not stop.is_set():
            try:
                answer = client.get("/exams/studies", params={"PatientId": patient_id})
            except httpx.TransportError:
                return  # killed
            if 200 <= answer.status_code < 300:
                answered.append(answer.headers["x-request-id"])


def stored_request_ids(url: str) -> set[str]:
    found: set[str] = set()
    next_page: str | None = "/audit-events?limit=1000"
    with httpx.Client(base_url=url, timeout=30, headers=AUDITOR) as client:
        while next_page:
            page = client.get(next_page).json()
            found |= {event["record"]["request_id"] for event in page["events"]}
            next_page = page["next"]
    return found


def shipped_request_ids(rsyslog: Rsyslog) -> set[str]:
    found = set()
    for message in rsyslog.received():
        root = ET.fromstring(message.raw[message.raw.index(BOM) + len(BOM):])  # noqa: S314 - our own XML
        for detail in root.iter("ParticipantObjectDetail"):
            if detail.get("type") == "RequestID":
                found.add(base64.b64decode(detail.get("value", "")).decode())
    return found


async def test_every_2xx_has_its_record_after_a_kill_9(orthanc: Orthanc, rsyslog: Rsyslog, database_url: str,
                                                       tmp_path: Path) -> None:
    owner = new_patient_id()
    env = gateway_env(auth_mode="jwt", auth_jwt_secret=SECRET, pacs_service_url=orthanc.dicomweb_url,
                      pacs_profile="orthanc", database_url=database_url, audit_trail="on",
                      audit_syslog_url=rsyslog.url, log_level="warning")
    process = GatewayProcess(env, tmp_path / "gw.log")
    process.start()
    try:
        instance = generated(owner)
        files = [("file", (f"{instance.sop_uid}.dcm", instance.data, "application/dicom"))]
        upload = httpx.post(f"{process.url}/exams", files=files, headers=clinician(), timeout=30)
        assert upload.status_code == 200, upload.text
        answered: list[str] = [upload.headers["x-request-id"]]
        stop = threading.Event()
        clients = [threading.Thread(target=load, args=(process.url, owner, answered, stop)) for _ in range(4)]
        for client in clients:
            client.start()
        while len(answered) < 150:
            await asyncio.sleep(0.01)
        process.kill()  # mid-load: requests in flight, records queued, batches being shipped
        stop.set()
        for client in clients:
            client.join(timeout=30)
        at_kill = len(answered)
        process = GatewayProcess(env, tmp_path / "gw.log")
        process.start()  # the shipper resumes: leases of the killed process expire (30 s) or were never taken
        stored = await asyncio.to_thread(stored_request_ids, process.url)
        missing = set(answered) - stored
        assert missing == set(), f"{len(missing)} of {at_kill} answered requests have no stored record"
        deadline = asyncio.get_running_loop().time() + 90
        while set(answered) - shipped_request_ids(rsyslog):
            assert asyncio.get_running_loop().time() < deadline, "not every record reached the syslog server"
            await asyncio.sleep(0.2)
    finally:
        process.stop()
    print(f"answered before the kill: {at_kill}; all stored and shipped")  # shown with -s
