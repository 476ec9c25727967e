"""New-exam detection from Microsoft's DICOM service change feed (`NEW_EXAM_DETECTION=azure-changefeed`).

The service logs every instance stored, updated and deleted (`GET /changefeed`). The feed names instances, not
studies, and has no "study complete" entry, so the follower groups the entries by study and announces a study once
its entries have stopped for `NEW_EXAM_QUIET_S`:

1. **Note.** Each page of entries names studies; those with an entry whose `state` is still `Current` are stored as
   pending (their quiet time restarting), in the same transaction as the new feed position
   (`EventStore.note_studies(touch=True)`). Entries whose instance was replaced or deleted since are ignored: a
   study all of whose instances were deleted is never noted.
2. **Announce.** A pending study quiet for `NEW_EXAM_QUIET_S` (by the gateway's clock, when it read the entries) is
   looked up by QIDO-RS (the study, then its series with their instance counts); what the archive holds then is the
   event (`SourceID` `azure-changefeed`, `EventType` `COMPLETED`), stored in the transaction that marks the study
   announced. A study gone by then is forgotten. A study is announced once, as with Orthanc.

The two API versions page differently (microsoft/dicom-server's stored procedures): v1's `offset` is a **sequence
number** and a page holds the entries numbered offset+1 to offset+limit, so a gap in the numbers gives a short or
empty page while later entries exist (the follower then asks `/changefeed/latest` and steps over the gap); v2's
`offset` counts **entries** (rows skipped, in sequence order). The version is the service URL's (`.../v1`,
`.../v2`); the stored position is a sequence number under v1 and an entry count under v2, under a feed name of
each version. Pages are read without metadata: the announcement takes the study from QIDO-RS.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.callbacks.feeds import FeedFollower
from gateway.errors import UpstreamFailed
from gateway.ops.metrics import Metrics
from gateway.store.events import EventStore, NewEvent
from gateway.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)

SOURCE = "azure-changefeed"
PAGE = {1: 100, 2: 200}  # the largest page each version allows
_VERSION = re.compile(r"/v(\d+)(?:\.\d+)?(?:-[a-z]+)?/?$")


def api_version(service_url: str) -> int:
    """The DICOM service's API version from its URL (`https://…/v2`); 2 when it names none."""
    found = _VERSION.search(service_url)
    return 1 if found is not None and found.group(1) == "1" else 2


class AzureChangeFeedFollower(FeedFollower):
    def __init__(self, *, upstream: UpstreamClient, store: EventStore, subscribers: list[str], poll_s: float,
                 quiet_s: float, version: int, on_events: Callable[[], None], metrics: Metrics | None = None) -> None:
        super().__init__(source=SOURCE, feed=f"{SOURCE}-v{version}", upstream=upstream, store=store,
                         subscribers=subscribers, poll_s=poll_s, on_events=on_events, metrics=metrics)
        self._quiet_s = quiet_s
        self._version = version
        self._page = PAGE[version]

    async def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        """The JSON of a 200, None for a 204 (nothing there); any other answer raises, so that a refused or
        throttled read (429) is never taken for an empty page, a gone study or the feed's start."""
        answer = await self._upstream.request("GET", path, operation=SOURCE, params=params)
        if answer.status_code == 204:
            return None
        if answer.status_code != 200:
            raise UpstreamFailed("the DICOM service answered the change feed's read unexpectedly",
                                 {"upstream_status": answer.status_code})
        return answer.json() if answer.content.strip() else None

    async def _latest(self) -> int | None:
        """The newest entry's sequence number; None for an empty feed."""
        found = await self._get("changefeed/latest", [("includeMetadata", "false")])
        return _sequence(found) if isinstance(found, dict) else None

    async def _entries(self, offset: int) -> list[Any]:
        entries = await self._get("changefeed", [("offset", str(offset)), ("limit", str(self._page)),
                                                 ("includeMetadata", "false")])
        if entries is None:
            return []
        if not isinstance(entries, list):
            raise TypeError("the change feed did not answer a list")
        return entries

    async def _read_page(self) -> bool:
        position = await self._store.position(self.feed)
        if position is None:  # first start: from now on, not the archive's history
            position = await self._start_position()
            await self._store.set_position(self.feed, position)
            log.info("azure_changefeed_started", position=position)
        entries = await self._entries(position)
        studies = [str(_field(e, "studyInstanceUid")) for e in entries
                   if str(_field(e, "state")).lower() == "current" and str(_field(e, "action")).lower() != "delete"]
        newest: int | None = None
        if self._version == 2:
            moved = position + len(entries)
            more = len(entries) == self._page
        elif entries:
            moved = max(_sequence(e) for e in entries)
            more = True  # the next window may hold more
        else:  # an empty window: the feed's end, or a gap in the sequence numbers to step over
            newest = await self._latest()
            moved = min(position + self._page, newest) if newest is not None and newest > position else position
            more = moved != position
        if moved != position or studies:
            noted = await self._store.note_studies(self.feed, studies, moved, touch=True)
            log.info("azure_changefeed_read", position=moved, entries=len(entries), new_studies=noted)
        self._lag(await self._behind(moved, more, newest))
        return more

    async def _start_position(self) -> int:
        if self._version == 1:
            return await self._latest() or 0
        count = 0  # v2 counts entries: count them, a page at a time (once, at the very first start)
        while True:
            got = await self._entries(count)
            count += len(got)
            if len(got) < self._page:
                return count

    async def _behind(self, position: int, more: bool, newest: int | None) -> int:
        """Entries (v2) or sequence numbers (v1) the gateway has not read yet: 0 when it keeps up."""
        if not more:
            return 0
        if self._version == 1:
            latest = newest if newest is not None else await self._latest()
            return max(0, (latest or position) - position)
        return self._page  # at least a page behind; v2 gives no cheap count of what is left

    def _quiet_since(self) -> float:
        return time.time() - self._quiet_s

    async def _complete(self) -> list[str]:
        """The pending studies with no entry for `quiet_s` (whether the archive still holds them, `_event` says)."""
        return await self._pending(quiet_since=self._quiet_since())

    async def _event(self, study_uid: str) -> NewEvent | None:
        """The study as the archive holds it now; None when it holds none of it."""
        studies = await self._get("studies", [("StudyInstanceUID", study_uid),
                                              ("includefield", "NumberOfStudyRelatedInstances")])
        if not studies:  # 204: the archive holds none of it
            return None
        study: dict[str, Any] = studies[0]
        series: list[dict[str, Any]] = []
        while True:  # QIDO-RS answers at most 200 a page
            page = await self._get(f"studies/{study_uid}/series", [
                ("includefield", "NumberOfSeriesRelatedInstances"), ("limit", "200"), ("offset", str(len(series)))])
            series += page or []
            if not page or len(page) < 200:
                break
        modalities = sorted({_value(s, "00080060") for s in series} - {""})
        body: dict[str, Any] = {
            "SourceID": SOURCE,
            "StudyInstanceUID": study_uid,
            "AccessionNumber": _value(study, "00080050"),
            "PatientID": _value(study, "00100020"),
            "NumberOfStudyRelatedSeries": len(series),
            "NumberOfStudyRelatedInstances": sum(int(_value(s, "00201209") or 0) for s in series),
            "ModalitiesInStudy": modalities or sorted(_values(study, "00080061")),
            "AeTitles": [],  # the service does not keep the calling AE title
            "StationNames": sorted({_value(s, "00081010") for s in series} - {""}),
            "EventType": "COMPLETED",
            "StudyDate": _value(study, "00080020"),
            "StudyTime": _value(study, "00080030"),
            "StudyID": _value(study, "00200010") or None,
            "ReferringPhysicianName": _name(study, "00080090"),
            "StudyDescription": _value(study, "00081030"),
            "PatientName": _name(study, "00100010"),
            "PatientBirthDate": _value(study, "00100030"),
            "PatientSex": _value(study, "00100040"),
        }
        return NewEvent(origin=SOURCE, source_id=SOURCE, study_instance_uid=study_uid,
                        patient_id=body["PatientID"] or None, event_type="COMPLETED", body=body)


def _field(entry: object, name: str) -> object:
    """An entry's field, whatever its case (the service's JSON is camelCase; its documentation writes PascalCase)."""
    if not isinstance(entry, dict):
        raise TypeError("a change feed entry is not an object")
    for key, value in entry.items():
        if key.lower() == name.lower():
            return value
    raise KeyError(name)


def _sequence(entry: object) -> int:
    value = _field(entry, "sequence")
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("a change feed entry's sequence is not an integer")
    return value


def _values(item: dict[str, Any], tag: str) -> list[str]:
    return [str(v) for v in (item.get(tag) or {}).get("Value") or [] if not isinstance(v, dict)]


def _value(item: dict[str, Any], tag: str) -> str:
    found = _values(item, tag)
    return found[0] if found else ""


def _name(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0].get("Alphabetic", "")) if values and isinstance(values[0], dict) else ""
