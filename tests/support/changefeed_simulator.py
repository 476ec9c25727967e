"""A strict simulator of Microsoft's DICOM service change feed, and of the QIDO-RS searches the gateway's follower
makes next to it (no Azure is reachable from the project's machines).

Written from Microsoft's published documentation (the change feed overview, the DICOM conformance statement v2 in
/work/shared/upstreams/, the shared API reference) and the service's open-source stored procedures
(microsoft/dicom-server, `GetChangeFeed`, `GetChangeFeedV34`/`ByTimeV39`, `GetChangeFeedLatest...`):

- `GET /v1/changefeed?offset=&limit=&includeMetadata=`: the entries whose **sequence** is in (offset, offset+limit],
  in sequence order (`WHERE Sequence BETWEEN @offset+1 AND @offset+@limit`): a page covers a window of sequence
  numbers, so a gap in the numbers (an identity a failed store used up) gives a short page, or an empty one while
  later entries exist. `limit` 1-100, default 10.
- `GET /v2/changefeed?startTime=&endTime=&offset=&limit=&includeMetadata=`: the entries with startTime <= timestamp <
  endTime, in order of timestamp then sequence (`GetChangeFeedByTimeV39`), `offset` **rows** skipped
  (`OFFSET @offset ROWS FETCH NEXT @limit ROWS ONLY`).
  `limit` 1-200, default 100. Without a window: the whole feed.
- `GET /{v}/changefeed/latest`: the newest entry (v1 by sequence; v2 by timestamp, then sequence); `null` when the
  feed is empty (an assumption: the documentation does not show that answer).
- An entry: `sequence`, `studyInstanceUid`, `seriesInstanceUid`, `sopInstanceUid`, `action` (`Create`, `Update`,
  `Delete`), `timestamp` (UTC, ISO 8601), `state` and, with `includeMetadata` (default true) and only while that
  version of the instance exists, `metadata` (its DICOM JSON). `state` is the instance's state now, not when the
  entry was written: `Current` for its newest version, `Replaced` once a newer version was stored, `Deleted` once
  it was deleted (a Delete entry is `Deleted`).
- A bad `offset` (not an integer, negative), `limit` (not an integer, out of range), `includeMetadata` (not true or
  false) or time (not a date-time; endTime not after startTime) is `400` with a JSON error body. Unknown query
  parameters are ignored, as ASP.NET's model binding ignores them.
- QIDO-RS, as far as the follower asks: `GET /{v}/studies?StudyInstanceUID=` (study attributes; with
  `includefield=NumberOfStudyRelatedInstances` that count too) and `GET /{v}/studies/{study}/series` (Modality; with
  `includefield=NumberOfSeriesRelatedInstances` that count), both paged by `limit` (1-200, default 100) and
  `offset`. `204` when nothing matches. The search attributes the conformance statement lists for the level are
  accepted (only StudyInstanceUID filters here); any other is `400`.
- Faults: `fail(path, times, status)` answers the next `times` requests whose path ends with `path` with `status`
  (a 429 of the service's throttling, a 503).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import ThreadedServer, serve

LIMITS = {1: (10, 100), 2: (100, 200)}  # API version: (default, max) page size


@dataclass
class Instance:
    study: str
    series: str
    sop: str
    patient_id: str
    modality: str
    version: int  # the sequence of the entry that stored this version


@dataclass
class Entry:
    sequence: int
    study: str
    series: str
    sop: str
    action: str
    timestamp: datetime
    version: int  # the instance version it wrote (for a Delete: the one it removed)


@dataclass
class AzureDicomSimulator:
    entries: list[Entry] = field(default_factory=list)
    instances: dict[str, Instance] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    faults: dict[str, list[int]] = field(default_factory=dict)  # path suffix -> statuses still to answer
    _next: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedServer | None = None

    # --- the archive, driven by a test ---------------------------------------------------------------------------

    def store(self, study: str, series: str, sop: str, *, patient_id: str, modality: str = "CT") -> None:
        """Store an instance; storing one that exists replaces it (its earlier entries become Replaced)."""
        with self._lock:
            action = "Update" if sop in self.instances else "Create"
            sequence = self._take()
            self.instances[sop] = Instance(study, series, sop, patient_id, modality, sequence)
            self.entries.append(Entry(sequence, study, series, sop, action, datetime.now(UTC), sequence))

    def delete(self, sop: str) -> None:
        with self._lock:
            gone = self.instances.pop(sop)
            sequence = self._take()
            self.entries.append(Entry(sequence, gone.study, gone.series, sop, "Delete", datetime.now(UTC),
                                      gone.version))

    def skip(self, count: int) -> None:
        """Use up `count` sequence numbers without an entry (stores that failed after taking their identity)."""
        with self._lock:
            self._next += count

    def fail(self, path: str, times: int, status: int = 429) -> None:
        with self._lock:
            self.faults.setdefault(path, []).extend([status] * times)

    def _fault(self, request: Request) -> Response | None:
        with self._lock:
            for suffix, statuses in self.faults.items():
                if request.url.path.endswith(suffix) and statuses:
                    return JSONResponse({"error": "injected"}, status_code=statuses.pop())
        return None

    def _take(self) -> int:
        sequence = self._next
        self._next += 1
        return sequence

    # --- the API ---------------------------------------------------------------------------------------------------

    def _state(self, entry: Entry) -> str:
        current = self.instances.get(entry.sop)
        if entry.action == "Delete" or current is None:
            return "Deleted"
        return "Current" if current.version == entry.version else "Replaced"

    def _json(self, entry: Entry, metadata: bool) -> dict[str, Any]:
        state = self._state(entry)
        out: dict[str, Any] = {
            "sequence": entry.sequence, "studyInstanceUid": entry.study, "seriesInstanceUid": entry.series,
            "sopInstanceUid": entry.sop, "action": entry.action,
            "timestamp": entry.timestamp.isoformat().replace("+00:00", "Z"), "state": state,
        }
        if metadata and state == "Current":
            out["metadata"] = self._metadata(self.instances[entry.sop])
        return out

    @staticmethod
    def _metadata(instance: Instance) -> dict[str, Any]:
        return {"0020000D": {"vr": "UI", "Value": [instance.study]},
                "0020000E": {"vr": "UI", "Value": [instance.series]},
                "00080018": {"vr": "UI", "Value": [instance.sop]},
                "00100020": {"vr": "LO", "Value": [instance.patient_id]},
                "00080060": {"vr": "CS", "Value": [instance.modality]}}

    async def _changefeed(self, request: Request) -> Response:
        if (fault := self._fault(request)) is not None:
            return fault
        version = int(request.path_params["version"])
        self.requests.append(str(request.url.path) + "?" + request.url.query)
        default, maximum = LIMITS[version]
        query = request.query_params
        try:
            offset = _integer(query.get("offset", "0"), "offset", 0, 2**63 - 1)
            limit = _integer(query.get("limit", str(default)), "limit", 1, maximum)
            metadata = _boolean(query.get("includeMetadata", query.get("includemetadata", "true")))
            start = _time(query.get("startTime")) if version == 2 else None
            end = _time(query.get("endTime")) if version == 2 else None
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if start is not None and end is not None and end <= start:
            return JSONResponse({"error": "endTime must be after startTime"}, status_code=400)
        with self._lock:
            if version == 1:
                page = [e for e in self.entries if offset < e.sequence <= offset + limit]
            else:
                low = start or datetime.min.replace(tzinfo=UTC)
                high = end or datetime.max.replace(tzinfo=UTC)
                window = sorted((e for e in self.entries if low <= e.timestamp < high),
                                key=lambda e: (e.timestamp, e.sequence))
                page = window[offset:offset + limit]
            return JSONResponse([self._json(e, metadata) for e in page])

    async def _latest(self, request: Request) -> Response:
        if (fault := self._fault(request)) is not None:
            return fault
        version = int(request.path_params["version"])
        try:
            metadata = _boolean(request.query_params.get("includeMetadata", "true"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        with self._lock:
            if not self.entries:
                return JSONResponse(None)
            key = (lambda e: e.sequence) if version == 1 else (lambda e: (e.timestamp, e.sequence))
            return JSONResponse(self._json(max(self.entries, key=key), metadata))

    async def _studies(self, request: Request) -> Response:
        if (fault := self._fault(request)) is not None:
            return fault
        if set(request.query_params) - _STUDY_SEARCH - _PAGING:
            return JSONResponse({"error": "unsupported search parameter"}, status_code=400)
        try:
            window = _window(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        wanted = request.query_params.get("StudyInstanceUID")
        counted = "NumberOfStudyRelatedInstances" in request.query_params.getlist("includefield")
        with self._lock:
            by_study: dict[str, list[Instance]] = {}
            for instance in self.instances.values():
                if wanted is None or instance.study in wanted.split(","):
                    by_study.setdefault(instance.study, []).append(instance)
        if not by_study:
            return Response(status_code=204)
        answer = []
        for study, instances in by_study.items():
            item: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": [study]},
                                    "00100020": {"vr": "LO", "Value": [instances[0].patient_id]},
                                    "00080061": {"vr": "CS", "Value": sorted({i.modality for i in instances})}}
            if counted:
                item["00201208"] = {"vr": "IS", "Value": [len(instances)]}
            answer.append(item)
        return _qido(answer[window])

    async def _series(self, request: Request) -> Response:
        if (fault := self._fault(request)) is not None:
            return fault
        if set(request.query_params) - _SERIES_SEARCH - _PAGING:
            return JSONResponse({"error": "unsupported search parameter"}, status_code=400)
        try:
            window = _window(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        counted = "NumberOfSeriesRelatedInstances" in request.query_params.getlist("includefield")
        with self._lock:
            by_series: dict[str, list[Instance]] = {}
            for instance in self.instances.values():
                if instance.study == request.path_params["study"]:
                    by_series.setdefault(instance.series, []).append(instance)
        if not by_series:
            return Response(status_code=204)
        answer = []
        for series, instances in by_series.items():
            item: dict[str, Any] = {"0020000E": {"vr": "UI", "Value": [series]},
                                    "00080060": {"vr": "CS", "Value": [instances[0].modality]}}
            if counted:
                item["00201209"] = {"vr": "IS", "Value": [len(instances)]}
            answer.append(item)
        return _qido(answer[window])

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v{version:int}/changefeed", self._changefeed, methods=["GET"]),
            Route("/v{version:int}/changefeed/latest", self._latest, methods=["GET"]),
            Route("/v{version:int}/studies", self._studies, methods=["GET"]),
            Route("/v{version:int}/studies/{study}/series", self._series, methods=["GET"]),
        ])

    def url(self, version: int) -> str:
        assert self.server is not None
        return f"{self.server.url}/v{version}"


# The conformance statement's searchable attributes: "All Studies", and "Study's Series".
_STUDY_SEARCH = {"StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                 "ReferringPhysicianName", "StudyDate", "StudyDescription", "ModalitiesInStudy"}
_SERIES_SEARCH = {"SeriesInstanceUID", "Modality", "PerformedProcedureStepStartDate", "ManufacturerModelName"}
_PAGING = {"includefield", "limit", "offset", "fuzzymatching"}


def _window(request: Request) -> slice:
    offset = _integer(request.query_params.get("offset", "0"), "offset", 0, 2**31 - 1)
    limit = _integer(request.query_params.get("limit", "100"), "limit", 1, 200)
    return slice(offset, offset + limit)


def _qido(answer: list[dict[str, Any]]) -> Response:
    if not answer:  # also an offset past the results: 204, as the conformance statement says
        return Response(status_code=204)
    return Response(json.dumps(answer), media_type="application/dicom+json")


def _integer(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError("includeMetadata must be true or false")
    return text.lower() == "true"


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date-time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@contextmanager
def azure_simulator() -> Iterator[AzureDicomSimulator]:
    simulator = AzureDicomSimulator()
    with serve(simulator.app()) as server:
        simulator.server = server
        yield simulator
