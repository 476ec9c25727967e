"""`/dicomweb/...`: DICOMweb for viewers, passed through to the PACS and narrowed to what the caller may see.

Callers (`viewer.access`): the gateway's own JWTs (a clinician sees everything; a patient only their own patient's
studies, read-only) and viewer tokens from `GET /token` (exactly one study).

With a viewer token: searches are narrowed to the token's study (a StudyInstanceUID filter is replaced, whatever it
holds: a list, a backslash, a wildcard) and their answers filtered; a study in the path other than the token's is
404. Retrieval streams from the PACS (`viewer.relay`). One handler per kind of resource; `viewer.routes` maps the
paths to them. Every handler first finds out who is calling (401/403), then checks the UIDs in the path (400).
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.callers import Authenticator, Caller, Role
from gateway.dicom.media import DICOM_JSON, JPEG, MULTIPART_OCTET, PNG
from gateway.dicom.tags import PATIENT_ID, STUDY_UID
from gateway.dicom.uid import is_valid_uid
from gateway.edge.bodies import accept_media_type
from gateway.edge.params import bad_parameter
from gateway.edge.related import spool_related
from gateway.errors import Forbidden, NotFound
from gateway.exams.routes import Exams
from gateway.exams.uploads import ExamUploads, FilePart
from gateway.upstream.client import UpstreamClient
from gateway.upstream.ownership import Resource
from gateway.viewer.access import Access, Gatekeeper
from gateway.viewer.query import parse_qido, rendering_params, uid_list
from gateway.viewer.relay import OFFERS, Links, Relay, datasets, multipart_accept, negotiate, offers, wants_single_part
from gateway.viewer.tokens import ViewerTokens

PREFIX = "/dicomweb"
STOW_MEDIA_TYPES = frozenset({"multipart/related"})  # PS3.18 §10.5.1.1; the part type is read per part
CROSS_ORIGIN = {"Cross-Origin-Resource-Policy": "cross-origin"}
_FRAMES = re.compile(r"[1-9][0-9]{0,5}(,[1-9][0-9]{0,5}){0,999}")
_BULK = re.compile(r"[0-9A-Fa-f]{8}(/[0-9A-Fa-f]{8}|/[0-9]{1,6})*")


def path_uids(request: Request) -> tuple[str | None, str | None, str | None]:
    """The study, series and instance UIDs the route captured, checked in that order (400 for an invalid one)."""
    found: list[str | None] = []
    for level in ("study", "series", "instance"):
        value = request.path_params.get(level)
        if value is not None and not is_valid_uid(value):
            raise bad_parameter(f"{level} UID in the path", "not a valid UID")
        found.append(value)
    return found[0], found[1], found[2]


def below_prefix(request: Request) -> str:
    """The request's path after `/dicomweb/`, as sent (empty segments and all). The handlers run inside the
    `/dicomweb` Mount, whose `root_path` ends with the prefix."""
    scope = request.scope
    return str(scope["path"])[len(scope.get("root_path", "")):].removeprefix("/")


def no_such_resource(request: Request) -> NotFound:
    return NotFound("no such DICOMweb resource", {"path": f"{PREFIX}/{below_prefix(request)}"})


def _bulk_path(request: Request) -> str | None:
    """The attribute path after `.../bulk/`, empty segments dropped as everywhere else in the path."""
    path: str | None = request.path_params.get("attribute")
    return None if path is None else "/".join(segment for segment in path.split("/") if segment)


def _path(resource: Resource, *rest: str) -> str:
    """The PACS's path of a resource: `studies/{study}[/series/{series}[/instances/{instance}]]/{rest}`."""
    levels = [("studies", resource.study), ("series", resource.series), ("instances", resource.instance)]
    return "/".join([part for name, uid in levels if uid is not None for part in (name, uid)] + list(rest))


class DicomWeb:
    """The `/dicomweb` handlers, one per kind of resource (`viewer.routes` maps the paths to them)."""

    def __init__(self, *, upstream: UpstreamClient, exams: Exams, authenticator: Authenticator,
                 tokens: ViewerTokens, uploads: ExamUploads, public_base_url: str, max_upload_bytes: int,
                 max_files: int, trusted_proxies: frozenset[str] = frozenset()) -> None:
        self._upstream = upstream
        self._exams = exams
        self._uploads = uploads
        self._max_upload_bytes = max_upload_bytes
        self._max_files = max_files
        self._gate = Gatekeeper(authenticator=authenticator, tokens=tokens, exams=exams)
        self._links = Links(public_base_url=public_base_url, trusted_proxies=trusted_proxies)
        self._relay = Relay(upstream=upstream, public_base_url=public_base_url)

    # -- QIDO-RS ---------------------------------------------------------------------------------------------------

    async def search(self, request: Request, *, level: str) -> Response:
        """`{level}` is studies, series or instances, below the study (and series) in the path if any."""
        access = await self._gate.access(request)
        study, series, _ = path_uids(request)
        negotiate(request, OFFERS["metadata"])
        query = parse_qido(request.query_params)
        if study is not None:
            await self._gate.check_study(access, study, series)
        # A scoped caller's filters narrow within its scope and never widen it: its own patient (and study) are
        # asked for whatever else the query says, and a filter naming something outside them finds nothing.
        drop: list[str] = []
        scope: list[tuple[str, str]] = []
        if access.study is not None:
            asked = query.match("StudyInstanceUID")
            if asked is not None and access.study not in uid_list("StudyInstanceUID", asked):
                return datasets([])
            drop.append("StudyInstanceUID")
            if study is None:
                scope.append(("StudyInstanceUID", access.study))
        if access.patient is not None:
            asked = query.match("PatientID")
            if asked is not None and asked != access.patient:
                return datasets([])
            drop.append("PatientID")
            scope += [("PatientID", self._upstream.profile.exact_value(access.patient)),
                      ("includefield", PATIENT_ID), ("includefield", STUDY_UID)]
        path = "/".join(filter(None, ["studies" if study else None, study,
                                      "series" if series else None, series, level]))
        found = await self._exams.qido(path, [*query.params(without=tuple(drop)), *scope])
        base = self._links.base_for(request)
        return datasets([self._links.rewrite(ds.raw, base) for ds in found if access.holds(ds)])

    # -- WADO-RS ---------------------------------------------------------------------------------------------------

    async def _open(self, request: Request, kind: str) -> tuple[Access, Resource]:
        """Who calls, which resource the path names (400 for a bad UID, 404 for a bad frame list or bulk path), and
        that it is within the caller's reach and can be sent as the client accepts."""
        access = await self._gate.access(request)
        study, series, instance = path_uids(request)
        assert study is not None  # every WADO-RS route names a study
        frames, bulk = request.path_params.get("frames"), _bulk_path(request)
        if (frames is not None and not _FRAMES.fullmatch(frames)) or (bulk is not None and not _BULK.fullmatch(bulk)):
            raise no_such_resource(request)
        await self._gate.check_study(access, study, series)
        negotiate(request, offers(kind, instance=instance is not None))
        resource = Resource(study, series, instance)
        if kind != "retrieve" and kind != "metadata":
            # These carry no PatientID to check, so the resource must be the caller's alone under its UID.
            await self._gate.check_alone(access, resource)
        return access, resource

    async def retrieve(self, request: Request) -> Response:
        access, resource = await self._open(request, "retrieve")
        single = resource.instance is not None and wants_single_part(request)
        return await self._relay.retrieve(_path(resource), access, single=single)

    async def metadata(self, request: Request) -> Response:
        access, resource = await self._open(request, "metadata")
        kept = await self._relay.metadata(_path(resource, "metadata"), access)
        base = self._links.base_for(request)
        return datasets([self._links.rewrite(ds.raw, base) for ds in kept])

    async def rendered(self, request: Request) -> Response:
        """`.../rendered` of a study, series or instance, and `.../frames/{frames}/rendered`."""
        _, resource = await self._open(request, "rendered")
        frames = request.path_params.get("frames")
        return await self._render(request, _path(resource, *(("frames", frames) if frames else ()), "rendered"))

    async def thumbnail(self, request: Request) -> Response:
        """Served as the rendered resource: what Orthanc has of PS3.18 §10.4.1.1.4's thumbnails."""
        _, resource = await self._open(request, "thumbnail")
        return await self._render(request, _path(resource, "rendered"))

    async def _render(self, request: Request, path: str) -> Response:
        asked = request.headers.get("accept", "")
        accept = PNG if PNG in asked and JPEG not in asked else JPEG
        return await self._relay.relay(path, "dicomweb_rendered", accept, rendering_params(request.query_params),
                                       extra=CROSS_ORIGIN)

    async def frames(self, request: Request) -> Response:
        _, resource = await self._open(request, "frames")
        path = _path(resource, "frames", request.path_params["frames"])
        return await self._relay.relay(path, "dicomweb_frames", multipart_accept(request, MULTIPART_OCTET), [])

    async def bulk(self, request: Request) -> Response:
        _, resource = await self._open(request, "bulk")
        path = _path(resource, "bulk", _bulk_path(request) or "")
        return await self._relay.relay(path, "dicomweb_bulk", MULTIPART_OCTET, [], extra=CROSS_ORIGIN)

    async def nowhere(self, request: Request) -> Response:
        """A GET that names no DICOMweb resource: 404, after the caller and the UIDs the path holds are checked."""
        await self._gate.access(request)
        path_uids(request)
        raise no_such_resource(request)

    # -- STOW-RS ---------------------------------------------------------------------------------------------------

    async def store(self, request: Request) -> Response:
        """POST /studies and /studies/{study}."""
        access = await self._gate.access(request)
        return await self._store(request, access, request.path_params.get("study"))

    async def store_elsewhere(self, request: Request) -> Response:
        """A POST to any other path under /dicomweb: 404, except for the STOW-RS paths with slashes added at either
        end (`/dicomweb//studies`, `/dicomweb/studies/{study}/`), which store as before the routes were split."""
        access = await self._gate.access(request)
        path = below_prefix(request).strip("/")
        parts = path.split("/")
        if parts[0] != "studies" or len(parts) > 2:
            raise NotFound("STOW-RS goes to /dicomweb/studies or /dicomweb/studies/{study}", {"path": path})
        return await self._store(request, access, parts[1] if len(parts) == 2 else None)

    async def _store(self, request: Request, access: Access, study: str | None) -> Response:
        """STOW-RS into a study: a diagnostic viewer token into its own study only, a clinician anywhere."""
        if study is not None and not is_valid_uid(study):
            raise bad_parameter("study UID in the path", "not a valid UID")
        if not access.can_store:
            raise Forbidden("this token may only read", {"required": "a diagnostic viewer token or a clinician"})
        if access.study is not None and study not in (None, access.study):
            raise NotFound("no such study", {"study": study})
        accept_media_type(request, STOW_MEDIA_TYPES, "STOW-RS takes multipart/related; type=\"application/dicom\"")
        files = await spool_related(request, max_bytes=self._max_upload_bytes, max_parts=self._max_files)
        caller = (Caller("viewer", frozenset({Role.PATIENT}), access.patient) if access.patient is not None
                  else Caller("clinician", frozenset({Role.CLINICIAN})))
        try:
            parts_in = [FilePart(f.filename or f"part {i + 1}", spooled=f) for i, f in enumerate(files)]
            dataset, _, duplicates = await self._uploads.accept(parts_in, caller, study=access.study or study)
        finally:
            for file in files:
                await file.close()
        self._uploads.add_duplicates(dataset, duplicates)
        return JSONResponse(self._links.rewrite(dataset.raw, self._links.base_for(request)), media_type=DICOM_JSON,
                            headers={"Cache-Control": "no-store"})

