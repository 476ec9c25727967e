"""New-exam detection for a PACS that cannot post callbacks: follow Orthanc's change feed (`NEW_EXAM_DETECTION`).

Orthanc lists changes in `GET /changes?since=<seq>&limit=<n>` (native API). A study that has received no instance for
`StableAge` seconds gets a `StableStudy` change; for each one the gateway builds the event a PACS would have posted
(EventType `COMPLETED`, the study's identifiers, counts, modalities and stations) and stores it through the same
outbox as callbacks. The feed position is written in the same transaction as the events of a page of changes, so a
restart continues where the last committed page ended: no study is missed, none is stored twice. On the very first
start (no stored position) the follower starts at the end of the feed: existing studies are not announced again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from gateway.errors import GatewayError
from gateway.ops.background import Background
from gateway.store.events import EventStore, NewEvent
from gateway.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)

FEED = "orthanc-changes"
PAGE = 100


class OrthancChangeFollower:
    def __init__(self, *, upstream: UpstreamClient, store: EventStore, subscribers: list[str], poll_s: float,
                 on_events: Callable[[], None]) -> None:
        self._upstream = upstream
        self._store = store
        self._subscribers = subscribers
        self._poll_s = poll_s
        self._on_events = on_events  # called after events are stored (wakes the delivery worker)
        self._background = Background("orthanc-changes", self._run)

    async def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    async def _run(self) -> None:
        while True:
            try:
                more = await self.step()
            except asyncio.CancelledError:
                raise
            except (GatewayError, OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("orthanc_changes_failed", error=type(exc).__name__, message=str(exc)[:200])
                more = False
            if not more:
                await asyncio.sleep(self._poll_s)

    async def step(self) -> bool:
        """Read one page of changes and store its events; True when more pages are waiting."""
        position = await self._store.position(FEED)
        if position is None:
            last = await self._upstream.native_json("changes?last", FEED)
            position = int(last["Last"]) if isinstance(last, dict) else 0
            await self._store.set_position(FEED, position)
            log.info("orthanc_changes_started", position=position)
        page = await self._upstream.native_json(f"changes?since={position}&limit={PAGE}", FEED)
        if not isinstance(page, dict):
            return False
        new: list[NewEvent] = []
        for change in page.get("Changes", []):
            if change.get("ChangeType") == "StableStudy" and change.get("ResourceType") == "Study":
                event = await self._event(str(change["ID"]))
                if event is not None:
                    new.append(event)
        last = int(page.get("Last", position))
        if last == position and not new:
            return False
        stored = await self._store.add_many(new, self._subscribers, feed=(FEED, last))
        if any(created for _, created in stored):
            self._on_events()
        log.info("orthanc_changes_read", position=last, studies=len(new))
        return not page.get("Done", True)

    async def _event(self, study_id: str) -> NewEvent | None:
        study = await self._upstream.native_json(f"studies/{study_id}", FEED)
        series = await self._upstream.native_json(f"studies/{study_id}/series", FEED)
        if not isinstance(study, dict) or not isinstance(series, list):
            return None  # deleted since: nothing to announce
        tags: dict[str, str] = study.get("MainDicomTags", {})
        patient: dict[str, str] = study.get("PatientMainDicomTags", {})
        modalities = sorted({s.get("MainDicomTags", {}).get("Modality", "") for s in series} - {""})
        stations = sorted({s.get("MainDicomTags", {}).get("StationName", "") for s in series} - {""})
        ae_titles: set[str] = set()
        for item in series:
            instances = item.get("Instances") or []
            if instances:
                aet = await self._upstream.native_json(f"instances/{instances[0]}/metadata?expand", FEED)
                if isinstance(aet, dict) and aet.get("RemoteAET"):
                    ae_titles.add(str(aet["RemoteAET"]))
        uid = tags.get("StudyInstanceUID", "")
        body: dict[str, Any] = {
            "SourceID": FEED,
            "StudyInstanceUID": uid,
            "AccessionNumber": tags.get("AccessionNumber", ""),
            "PatientID": patient.get("PatientID", ""),
            "NumberOfStudyRelatedSeries": len(series),
            "NumberOfStudyRelatedInstances": sum(len(s.get("Instances") or []) for s in series),
            "ModalitiesInStudy": modalities,
            "AeTitles": sorted(ae_titles),
            "StationNames": stations,
            "EventType": "COMPLETED",
            "StudyDate": tags.get("StudyDate", ""),
            "StudyTime": tags.get("StudyTime", ""),
            "StudyID": tags.get("StudyID") or None,
            "ReferringPhysicianName": tags.get("ReferringPhysicianName", ""),
            "StudyDescription": tags.get("StudyDescription", ""),
            "PatientName": patient.get("PatientName", ""),
            "PatientBirthDate": patient.get("PatientBirthDate", ""),
            "PatientSex": patient.get("PatientSex", ""),
        }
        return NewEvent(origin=FEED, source_id=FEED, study_instance_uid=uid, patient_id=body["PatientID"] or None,
                        event_type="COMPLETED", body=body)
