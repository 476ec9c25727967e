"""New-exam detection for a PACS that cannot post callbacks: follow Orthanc's change feed (`NEW_EXAM_DETECTION`).

Orthanc lists changes in `GET /changes?since=<seq>&limit=<n>` (native API). A new study gets a `NewStudy` change
with its first instance, and a `StableStudy` change once it has received no instance for `StableAge` seconds. But
Orthanc keeps its list of not-yet-stable studies in memory: stopped (a crash, a kill, a redeploy) within
`StableAge` of a study's last instance, it never emits that study's `StableStudy`, and after its restart it reports
the study `IsStable: true` (measured with Orthanc 1.10, 4 times out of 4). Following `StableStudy` alone missed
those studies. So the follower works in two steps:

1. **Note.** Each page of changes names studies (`NewStudy`, `StableStudy`); they are stored as pending, in the
   same transaction as the new feed position (`EventStore.note_studies`). A gateway restart resumes from there.
2. **Announce.** Each pending study is asked for (`GET /studies/{id}`); once Orthanc says it is stable
   (`IsStable`, which it says at `StableAge` and after a restart alike), the gateway builds the event a PACS would
   have posted (EventType `COMPLETED`, the study's identifiers, counts, modalities and stations) and stores it
   through the callbacks' outbox, in the same transaction that marks the study announced
   (`EventStore.announce_study`): a study is announced once, whatever restarts in between. A study deleted before
   it was stable is forgotten.

A study announced is not announced again when instances are added later (a `StableStudy` for it finds it
announced): subscribers get one `COMPLETED` per study, as from a PACS that posts callbacks once. On the very first
start (no stored position) the follower starts at the end of the feed: existing studies are not announced again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.errors import GatewayError
from gateway.ops.background import Background
from gateway.ops.metrics import Metrics
from gateway.store.events import EventStore, NewEvent
from gateway.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)

FEED = "orthanc-changes"
PAGE = 100
_NAMES_A_STUDY = frozenset({"NewStudy", "StableStudy"})


class OrthancChangeFollower:
    def __init__(self, *, upstream: UpstreamClient, store: EventStore, subscribers: list[str], poll_s: float,
                 on_events: Callable[[], None], metrics: Metrics | None = None) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._store = store
        self._subscribers = subscribers
        self._poll_s = poll_s
        self._on_events = on_events  # called after events are stored (wakes the delivery worker)
        self._background = Background("orthanc-changes", self._run)
        self._checked_up_to = ""  # the pending studies are looked at a page at a time, in the order of their ids

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
        """Read one page of changes, note the studies it names, announce the pending studies that are stable; True
        when more pages are waiting."""
        more = await self._read_page()
        await self._announce_stable()
        if self._metrics is not None:
            self._metrics.feed_last_poll.labels(FEED).set(time.time())
        return more

    async def _read_page(self) -> bool:
        position = await self._store.position(FEED)
        if position is None:
            last = await self._upstream.native_json("changes?last", FEED)
            position = int(last["Last"]) if isinstance(last, dict) else 0
            await self._store.set_position(FEED, position)
            log.info("orthanc_changes_started", position=position)
        page = await self._upstream.native_json(f"changes?since={position}&limit={PAGE}", FEED)
        if not isinstance(page, dict):
            return False
        studies = [str(change["ID"]) for change in page.get("Changes", [])
                   if change.get("ResourceType") == "Study" and change.get("ChangeType") in _NAMES_A_STUDY]
        last = int(page.get("Last", position))
        if last != position or studies:
            noted = await self._store.note_studies(FEED, studies, last)
            log.info("orthanc_changes_read", position=last, studies=noted)
        done = bool(page.get("Done", True))
        if self._metrics is not None:
            newest = last if done else await self._newest(last)
            self._metrics.feed_lag.labels(FEED).set(max(0, newest - last))
        return not done

    async def _newest(self, default: int) -> int:
        """The feed's newest sequence number (`changes?last`)."""
        found = await self._upstream.native_json("changes?last", FEED)
        return int(found["Last"]) if isinstance(found, dict) and "Last" in found else default

    async def _announce_stable(self) -> None:
        """Look at the next page of pending studies (in turn: those still receiving instances do not hold up the
        others) and announce the stable ones."""
        announced = 0
        pending = await self._store.pending_studies(FEED, PAGE, after=self._checked_up_to)
        self._checked_up_to = pending[-1] if len(pending) == PAGE else ""
        for study_id in pending:
            study = await self._upstream.native_json(f"studies/{study_id}", FEED)
            if isinstance(study, dict) and not study.get("IsStable", False):
                continue  # still receiving instances: Orthanc says when it is stable
            event = await self._event(study_id) if isinstance(study, dict) else None
            if await self._store.announce_study(FEED, study_id, event, self._subscribers) and event is not None:
                announced += 1
        if announced:
            log.info("orthanc_studies_announced", studies=announced)
            if self._metrics is not None:
                self._metrics.feed_announced.labels(FEED).inc(announced)
            self._on_events()

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
