"""`/exams`: a patient's studies, series and instances (QIDO-RS), and one instance as a file or a thumbnail (WADO-RS).

Scope is enforced three times over: the PatientId a caller names must be its own (unless a clinician); the values
sent upstream cannot widen a match (`qido`); and every upstream answer is filtered to exact PatientID equality before
it leaves. A study, series or instance that is not the patient's answers 404 exactly like one that does not exist.
A downloaded file's own PatientID is checked from its first bytes before any byte is sent (a UID shared by two
patients' data in the PACS then still cannot hand one patient the other's file).

The instance route takes `PatientId` as optional (the contract lists only `fileType` there): a patient token that
names none is scoped to its own patient, and a clinician that names none gets the instance, whoever it belongs to.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import asynccontextmanager

import structlog
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.auth.callers import Authenticator, Caller, Handler, Role, guarded
from gateway.auth.scope import EXAMS_ROLES, require_patient_access
from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import JPEG, MULTIPART_DICOM_AS_STORED
from gateway.dicom.part10 import PatientIdProbe
from gateway.dicom.tags import (
    ACCESSION_NUMBER,
    COLUMNS,
    PATIENT_ID,
    RETRIEVE_URL,
    ROWS,
    SERIES_UID,
    SOP_INSTANCE_UID,
    STUDY_UID,
)
from gateway.edge.multipart import MultipartError, SinglePartReader, boundary_of
from gateway.edge.params import (
    PATIENT_ID_SPELLINGS,
    Level,
    SearchQuery,
    bad_parameter,
    is_small_integer,
    optional_patient_id,
    parse_search,
    single,
    validate_path_uid,
)
from gateway.errors import BadRequest, Forbidden, NotFound, OutOfScope, UpstreamFailed
from gateway.exams.links import ExamLinks
from gateway.exams.uploads import ExamUploads
from gateway.upstream.client import UpstreamClient, UpstreamStream
from gateway.upstream.ownership import Ownership, Resource

log = structlog.get_logger(__name__)

FILE_TYPES = ("application/dicom", "image/jpeg")
DEFAULT_THUMBNAIL = 256
MAX_THUMBNAIL = 2048
# Paging through an upstream whose matching is loose (see `_search`): 50 pages of 200 cover 10,000 items.
UPSTREAM_PAGE = 200
MAX_UPSTREAM_PAGES = 50
PRIVATE = {"Cache-Control": "private, no-store"}  # patient data: never kept by shared caches


class Exams:
    def __init__(self, *, upstream: UpstreamClient, links: ExamLinks) -> None:
        self._upstream = upstream
        self._profile = upstream.profile
        self._links = links
        self.ownership = Ownership(upstream)

    # --- search ---------------------------------------------------------------------------------------------------

    async def studies(self, request: Request, caller: Caller) -> Response:
        query = self._scoped_search(request, caller, Level.STUDY)
        found = await self._search("studies", query)
        for ds in found:
            self._link(ds, self._links.study(ds.string(STUDY_UID) or "", query.patient_id))
        return _json(found)

    async def series(self, request: Request, caller: Caller) -> Response:
        study = validate_path_uid("study", request.path_params["study"])
        query = self._scoped_search(request, caller, Level.SERIES)
        found = await self._search(f"studies/{study}/series", query)
        if not found and not await self.owns(query.patient_id, study):
            raise OutOfScope("no such study for this patient", {"study": study})
        for ds in found:
            self._link(ds, self._links.series(study, ds.string(SERIES_UID) or "", query.patient_id))
        return _json(found)

    async def instances(self, request: Request, caller: Caller) -> Response:
        study = validate_path_uid("study", request.path_params["study"])
        series = validate_path_uid("series", request.path_params["series"])
        query = self._scoped_search(request, caller, Level.INSTANCE)
        found = await self._search(f"studies/{study}/series/{series}/instances", query)
        if not found and not await self.owns(query.patient_id, study, series):
            raise OutOfScope("no such series for this patient", {"study": study, "series": series})
        for ds in found:
            self._link(ds, self._links.instance(study, series, ds.string(SOP_INSTANCE_UID) or "", query.patient_id))
        return _json(found)

    def _link(self, dataset: DicomJson, url: str) -> None:
        """The RetrieveURL names the gateway's path for the item, never the PACS's (PS3.18 §10.6.3.3.1)."""
        if RETRIEVE_URL in dataset.raw:
            dataset.set_string(RETRIEVE_URL, "UR", url)

    def _scoped_search(self, request: Request, caller: Caller, level: Level) -> SearchQuery:
        query = parse_search(request.query_params, level)
        require_patient_access(caller, query.patient_id)
        return query

    async def _search(self, path: str, query: SearchQuery) -> list[DicomJson]:
        params = [("PatientID", self._profile.exact_value(query.patient_id))]
        params += [(name, self._profile.exact_value(value)) for name, value in query.filters]
        # PatientID in every answer, whatever the level, so that the exact filter below can see it.
        params += [("includefield", field) for field in (*query.includefields, PATIENT_ID)]
        accession = dict(query.filters).get("AccessionNumber")

        def exact(found: list[DicomJson]) -> list[DicomJson]:
            return [ds for ds in found if ds.string(PATIENT_ID) == query.patient_id
                    and (accession is None or ds.string(ACCESSION_NUMBER) == accession)]

        if self._profile.exact_matching:
            page = [("limit", str(query.limit)), ("offset", str(query.offset))]
            return exact(await self.qido(path, params + page))
        # The upstream's matching is looser than equality (Orthanc: case-insensitive, `?` for unsendable
        # characters), so near-miss patients' items can sit in any page. Walk its pages, keep exact matches, and
        # cut the caller's page from those: never fewer items than there are, however many near misses there are.
        wanted = query.offset + query.limit
        matches: list[DicomJson] = []
        for number in range(MAX_UPSTREAM_PAGES):
            found = await self.qido(path, [*params, ("limit", str(UPSTREAM_PAGE)),
                                            ("offset", str(number * UPSTREAM_PAGE))])
            matches += exact(found)
            if len(matches) >= wanted or len(found) < UPSTREAM_PAGE:
                break
        return matches[query.offset : wanted]

    async def owns(self, patient_id: str, study: str, series: str | None = None) -> bool:
        """Whether the study (or the series in it) exists for exactly this patient."""
        return await self.ownership.holds(patient_id, Resource(study, series))

    async def qido(self, path: str, params: Iterable[tuple[str, str]]) -> list[DicomJson]:
        return await self.ownership.qido(path, params)

    # --- retrieval ------------------------------------------------------------------------------------------------

    async def instance(self, request: Request, caller: Caller) -> Response:
        study = validate_path_uid("study", request.path_params["study"])
        series = validate_path_uid("series", request.path_params["series"])
        sop = validate_path_uid("instance", request.path_params["instance"])
        params = request.query_params
        _only(params, {*PATIENT_ID_SPELLINGS, "fileType", "size"})
        patient_id = _instance_patient(caller, optional_patient_id(params, "PatientId"))
        file_type = single(params, "fileType")
        if file_type is None:
            raise BadRequest("fileType is required", {"parameter": "fileType", "allowed": list(FILE_TYPES)})
        if file_type not in FILE_TYPES:
            raise bad_parameter("fileType", f"one of {', '.join(FILE_TYPES)}")
        size = _thumbnail_size(params)

        path = f"studies/{study}/series/{series}/instances/{sop}"
        if patient_id is None:  # a clinician who named no patient: the instance, whoever it belongs to
            if file_type == "image/jpeg":
                return await self._thumbnail(path, size, await self._locate_any_instance(study, series, sop))
            return await self._file(path, sop, None)
        if file_type == "image/jpeg":
            instance = await self._locate_instance(study, series, sop, patient_id)
            # A rendered image carries no PatientID to check, so the UID must be this patient's alone: a copy of
            # another patient's under the same UIDs could be the one the PACS renders.
            if not await self.ownership.holds_only(patient_id, Resource(study, series, sop)):
                raise OutOfScope("no such instance for this patient", {"instance": sop})
            return await self._thumbnail(path, size, instance)
        # For the file, the series is checked (a cheap query: an instance-level one makes Orthanc read the whole
        # file, ~50 ms for 80 MiB) and the instance's membership and patient come from the WADO-RS answer itself:
        # 404 when the instance is not in that series, and its PatientID read from its first bytes.
        if self._profile.orthanc_native_ids:  # exactly this patient's instance, by construction of the id
            owned = await self.ownership.holds(patient_id, Resource(study, series, sop))
        else:
            owned = await self.owns(patient_id, study, series)
        if not owned:
            raise OutOfScope("no such instance for this patient", {"instance": sop})
        return await self._file(path, sop, patient_id)

    async def _locate_instance(self, study: str, series: str, sop: str, patient_id: str) -> DicomJson:
        found = await self._search(
            f"studies/{study}/series/{series}/instances",
            SearchQuery(patient_id, (("SOPInstanceUID", sop),), includefields=(ROWS, COLUMNS), limit=2),
        )
        located = [ds for ds in found if ds.string(SOP_INSTANCE_UID) == sop
                   and ds.string(STUDY_UID) in (None, study) and ds.string(SERIES_UID) in (None, series)]
        if len(located) != 1:
            raise OutOfScope("no such instance for this patient", {"instance": sop})
        return located[0]

    async def _locate_any_instance(self, study: str, series: str, sop: str) -> DicomJson:
        found = await self.qido(f"studies/{study}/series/{series}/instances",
                                [("SOPInstanceUID", sop), ("includefield", ROWS), ("includefield", COLUMNS),
                                 ("limit", "2")])
        located = [ds for ds in found if ds.string(SOP_INSTANCE_UID) == sop]
        if not located:
            raise NotFound("no such instance", {"instance": sop})
        return located[0]

    async def _file(self, path: str, sop: str, patient_id: str | None) -> Response:
        response = await self._upstream.open_stream(
            "GET", path, operation="wado_instance", headers={"Accept": MULTIPART_DICOM_AS_STORED}
        )
        async with reading_multipart(response):
            _expect_found(response, path)
            reader = SinglePartReader(response.iter_raw(), boundary_of(response.headers.get("content-type", "")))
            await reader.open()
            body = reader.body()
            prefix = [] if patient_id is None else await _read_until_patient_known(body, patient_id, sop)
        headers = {
            **PRIVATE,
            "Content-Disposition": f'attachment; filename="{sop}.dcm"',
        }
        if reader.length is not None:
            headers["Content-Length"] = str(reader.length)
        return UpstreamRelay(prefix, body, response, media_type="application/dicom", headers=headers)

    async def _thumbnail(self, path: str, size: int, instance: DicomJson) -> Response:
        width, height = _viewport(size, instance.integer(ROWS), instance.integer(COLUMNS))
        # PS3.18 §8.3.5.1.3 viewport: the gateway computes it from the image's shape so that the longest edge is
        # `size` and the aspect ratio is kept (Orthanc stretches to whatever viewport it is given).
        response = await self._upstream.open_stream(
            "GET", f"{path}/rendered", operation="wado_rendered", params=[("viewport", f"{width},{height}")],
            headers={"Accept": JPEG},
        )
        try:
            _expect_found(response, path, media_type=JPEG)
        except BaseException:
            await response.aclose()
            raise
        headers = dict(PRIVATE)
        if "content-length" in response.headers:
            headers["Content-Length"] = response.headers["content-length"]
        return UpstreamRelay([], response.iter_raw(), response, media_type=JPEG, headers=headers)


def _instance_patient(caller: Caller, named: str | None) -> str | None:
    """Whose instance `GET .../instance/{uid}` may return: the patient named, or for a patient token that names
    none, its own patient (the contract lists only `fileType` here); None for a clinician who names none."""
    if named is None and Role.CLINICIAN not in caller.roles:
        named = caller.patient_id
        if named is None:
            raise Forbidden("this token names no patient", {"parameter": "PatientId"})
    if named is not None:
        require_patient_access(caller, named)
    return named


def _expect_found(response: UpstreamStream, path: str, media_type: str | None = None) -> None:
    if response.status_code == 404:
        raise NotFound("no such instance for this patient", {"instance": path.rsplit("/", 1)[-1]})
    if response.status_code != 200:
        raise UpstreamFailed("the PACS refused a retrieval", {"upstream_status": response.status_code})
    if media_type is not None and response.headers.get("content-type", "").split(";")[0].strip() != media_type:
        raise UpstreamFailed(f"the PACS answered with something other than {media_type}")


@asynccontextmanager
async def reading_multipart(upstream: UpstreamStream) -> AsyncIterator[None]:
    """Around reading the start of an upstream multipart answer: on any failure the answer is released, and a
    malformed body is the PACS's fault (502)."""
    try:
        yield
    except MultipartError as exc:
        await upstream.aclose()
        raise UpstreamFailed("the PACS answered with a malformed multipart body", {"reason": str(exc)}) from None
    except BaseException:
        await upstream.aclose()
        raise


async def _read_until_patient_known(body: AsyncIterator[bytes], patient_id: str, sop: str) -> list[bytes]:
    """Read the file's first bytes until its PatientID is known; 404 unless it is the patient's."""
    probe = PatientIdProbe()
    prefix: list[bytes] = []
    while not probe.done:
        try:
            chunk = await anext(body)
        except StopAsyncIteration:
            chunk, final = b"", True
        else:
            final = False
            prefix.append(chunk)
        try:
            probe.feed(chunk, final=final)
        except ValueError as exc:
            raise UpstreamFailed("the PACS returned a file whose header cannot be read", {"reason": str(exc)}) from None
    if probe.patient_id != patient_id:
        log.warning("wado_patient_mismatch", message="a UID resolved to a file of another patient; refused")
        raise OutOfScope("no such instance for this patient", {"instance": sop})
    return prefix


class UpstreamRelay(StreamingResponse):
    """Sends what was read ahead, then the rest of an upstream answer as it arrives.

    The upstream answer is released whatever happens: after the last byte, when the client goes away mid-stream,
    and when sending the response start fails before the body is even begun (a generator's `finally` alone would
    not run then, and each such request would keep a pooled upstream connection).
    """

    def __init__(self, prefix: list[bytes], rest: AsyncIterator[bytes], upstream: UpstreamStream, *,
                 media_type: str, headers: dict[str, str]) -> None:
        async def relay() -> AsyncGenerator[bytes, None]:
            for chunk in prefix:
                yield chunk
            async for chunk in rest:
                yield chunk

        self._relay = relay()
        self._rest = rest
        self._upstream = upstream
        super().__init__(self._relay, media_type=media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._relay.aclose()
            close_rest = getattr(self._rest, "aclose", None)  # an async generator's: stop its upstream reads
            if close_rest is not None:
                await close_rest()
            await self._upstream.aclose()


def _viewport(size: int, rows: int | None, columns: int | None) -> tuple[int, int]:
    if not rows or not columns:
        return size, size
    longest = max(rows, columns)
    return max(1, round(columns * size / longest)), max(1, round(rows * size / longest))


def _thumbnail_size(params: QueryParams) -> int:
    raw = single(params, "size")
    if raw is None:
        return DEFAULT_THUMBNAIL
    if not is_small_integer(raw) or not 1 <= int(raw) <= MAX_THUMBNAIL:
        raise bad_parameter("size", f"an integer from 1 to {MAX_THUMBNAIL}")
    return int(raw)


def _only(params: QueryParams, allowed: set[str]) -> None:
    unknown = sorted(set(params.keys()) - allowed)
    if unknown:
        raise bad_parameter(unknown[0], "unknown parameter")


def _json(datasets: list[DicomJson]) -> Response:
    return JSONResponse([ds.raw for ds in datasets], headers=PRIVATE)


def routes(exams: Exams, authenticator: Authenticator, uploads: ExamUploads) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(authenticator, EXAMS_ROLES, handler), methods=[method])

    return [
        route("/exams", uploads.upload, "POST"),
        route("/exams/studies", exams.studies, "GET"),
        route("/exams/studies/{study}/series", exams.series, "GET"),
        route("/exams/studies/{study}/series/{series}/instances", exams.instances, "GET"),
        route("/exams/studies/{study}/series/{series}/instance/{instance}", exams.instance, "GET"),
    ]
