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

from collections.abc import Callable
from typing import Any

import structlog

from gateway.callbacks.feeds import FeedFollower
from gateway.ops.metrics import Metrics
from gateway.store.events import EventStore, NewEvent
from gateway.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)

FEED = "orthanc-changes"
PAGE = 100
_NAMES_A_STUDY = frozenset({"NewStudy", "StableStudy"})


class OrthancChangeFollower(FeedFollower):
    def __init__(self, *, upstream: UpstreamClient, store: EventStore, subscribers: list[str], poll_s: float,
                 on_events: Callable[[], None], metrics: Metrics | None = None) -> None:
        super().__init__(source=FEED, feed=FEED, upstream=upstream, store=store, subscribers=subscribers,
                         poll_s=poll_s, on_events=on_events, metrics=metrics)

    async def _read_page(self) -> bool:
        position = await self._store.position(FEED)
        if position is None:
            position = await self._newest(0)
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
        self._lag(0 if done else await self._newest(last) - last)
        return not done

    async def _newest(self, default: int) -> int:
        """The feed's newest sequence number (`changes?last`)."""
        found = await self._upstream.native_json("changes?last", FEED)
        return int(found["Last"]) if isinstance(found, dict) and "Last" in found else default

    async def _complete(self) -> list[str]:
        """The pending studies Orthanc reports stable, or no longer has."""
        complete = []
        for study_id in await self._pending():
            study = await self._upstream.native_json(f"studies/{study_id}", FEED)
            if not isinstance(study, dict) or study.get("IsStable", False):
                complete.append(study_id)
        return complete

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
