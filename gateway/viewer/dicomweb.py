"""`/dicomweb/...`: DICOMweb for viewers, passed through to the PACS and narrowed to what the caller may see.

Callers: the gateway's own JWTs (a clinician sees everything; a patient only their own patient's studies, read-only)
and viewer tokens from `GET /token` (exactly one study). A token comes in `Authorization: Bearer` or, as OHIF sends
it, a `token` query parameter (never passed upstream); both present and different is refused.

With a viewer token: searches are narrowed to the token's study (a StudyInstanceUID filter is replaced, whatever it
holds: a list, a backslash, a wildcard) and their answers filtered; a study in the path other than the token's is
404. Retrieval streams from the PACS; the gateway picks the Accept header the PACS can serve (Orthanc refuses lists,
`image/*` and single-part `application/dicom`) and unwraps a single instance when the client asked for one.
URLs in JSON answers (RetrieveURL, BulkDataURI) point at the gateway.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth.callers import Authenticator, Caller, Role, guarded
from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON, JPEG, MULTIPART_DICOM_AS_STORED, MULTIPART_OCTET, PNG
from gateway.dicom.tags import PATIENT_ID, RETRIEVE_URL, STUDY_UID
from gateway.dicom.uid import is_valid_uid
from gateway.edge.accept import MAX_ACCEPT_BYTES, AcceptTooLong, MediaType, acceptable, ranges
from gateway.edge.multipart import MultipartError, PartReader, boundary_of
from gateway.edge.params import bad_parameter, validate_patient_id
from gateway.edge.related import spool_related
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotAcceptable,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamFailed,
)
from gateway.exams.routes import PRIVATE, Exams, UpstreamRelay
from gateway.exams.uploads import ExamUploads, FilePart
from gateway.settings import Settings
from gateway.upstream.client import UpstreamClient, UpstreamStream
from gateway.upstream.ownership import Resource
from gateway.viewer.query import parse_qido, rendering_params, uid_list
from gateway.viewer.scoped_parts import ScopedParts
from gateway.viewer.tokens import ViewerGrant, ViewerRole, ViewerTokens

CROSS_ORIGIN = {"Cross-Origin-Resource-Policy": "cross-origin"}
_FRAMES = re.compile(r"[1-9][0-9]{0,5}(,[1-9][0-9]{0,5}){0,999}")
_BULK = re.compile(r"[0-9A-Fa-f]{8}(/[0-9A-Fa-f]{8}|/[0-9]{1,6})*")


@dataclass(frozen=True, slots=True)
class Access:
    """What the caller may reach: one study (viewer token), one patient's studies, or everything."""

    study: str | None = None
    patient: str | None = None
    can_store: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed DICOMweb path: the study/series/instance it names and what follows them."""

    study: str | None
    series: str | None
    instance: str | None
    rest: list[str]  # e.g. [], ["metadata"], ["rendered"], ["frames", "1,2"], ["series"] (a search)
    search: str | None  # "studies", "series" or "instances" when the path is a search


def parse_path(path: str) -> Target:
    """`studies[/{study}[/series[/{series}[/instances[/{instance}]]]]]` (also `studies/{study}/instances`), then what
    follows; 400 for an invalid UID, 404 for anything that is not DICOMweb."""
    parts = [p for p in path.split("/") if p]
    missing = NotFound("no such DICOMweb resource", {"path": f"/dicomweb/{path}"})
    if parts in (["studies"], ["series"], ["instances"]):
        return _target([], [], parts[0])
    if len(parts) < 2 or parts[0] != "studies":
        raise missing
    uids = [_uid(parts[1], "study")]
    index = 2
    if parts[index:] == ["instances"] or parts[index:] == ["series"]:
        return _target(uids, [], parts[index])
    if parts[index:index + 1] == ["series"]:
        uids.append(_uid(parts[index + 1], "series"))
        index += 2
        if parts[index:] == ["instances"]:
            return _target(uids, [], "instances")
        if parts[index:index + 1] == ["instances"] and len(parts) > index + 1:
            uids.append(_uid(parts[index + 1], "instance"))
            index += 2
    rest = parts[index:]
    _check_rest(rest, instance_level=len(uids) == 3, path=path)
    return _target(uids, rest, None)


def _uid(value: str, level: str) -> str:
    if not is_valid_uid(value):
        raise bad_parameter(f"{level} UID in the path", "not a valid UID")
    return value


def _target(uids: list[str], rest: list[str], search: str | None) -> Target:
    padded: list[str | None] = [*uids, None, None, None]
    return Target(padded[0], padded[1], padded[2], rest, search)


def _check_rest(rest: list[str], *, instance_level: bool, path: str) -> None:
    ok = (
        rest in ([], ["metadata"], ["rendered"], ["thumbnail"])
        or (instance_level and len(rest) == 2 and rest[0] == "frames" and _FRAMES.fullmatch(rest[1]) is not None)
        or (instance_level and len(rest) == 3 and rest[0] == "frames" and rest[2] == "rendered"
            and _FRAMES.fullmatch(rest[1]) is not None)
        or (instance_level and len(rest) >= 2 and rest[0] == "bulk" and _BULK.fullmatch("/".join(rest[1:]))
            is not None)
    )
    if not ok:
        raise NotFound("no such DICOMweb resource", {"path": f"/dicomweb/{path}"})


class DicomWeb:
    def __init__(self, upstream: UpstreamClient, exams: Exams, authenticator: Authenticator, tokens: ViewerTokens,
                 public_base_url: str, uploads: ExamUploads, max_upload_bytes: int, max_files: int,
                 trusted_proxies: frozenset[str] = frozenset()) -> None:
        self._trusted_proxies = trusted_proxies
        self._upstream = upstream
        self._exams = exams
        self._uploads = uploads
        self._max_upload_bytes = max_upload_bytes
        self._max_files = max_files
        self._authenticator = authenticator
        self._tokens = tokens
        self._public = public_base_url.rstrip("/") + "/dicomweb"
        public = urlsplit(public_base_url)
        self._forwarded = f"host={public.netloc};proto={public.scheme}"

    # -- who is calling --------------------------------------------------------------------------------------------

    async def access(self, request: Request) -> Access:
        query = request.query_params.getlist("token")
        header = request.headers.get("authorization")
        bearer = header.partition(" ")[2].strip() if header and header.lower().startswith("bearer ") else None
        if len(query) > 1 or (query and bearer is not None and query[0] != bearer):
            raise Unauthorized("two different tokens: send one, in the Authorization header or the token parameter")
        raw = bearer if bearer is not None else (query[0] if query else None)
        if raw is not None and self._tokens.is_viewer_token(raw):
            grant: ViewerGrant = self._tokens.verify(raw)
            return Access(study=grant.study, patient=grant.patient, can_store=grant.role is ViewerRole.DIAGNOSTIC)
        if raw is not None and header is None:  # the gateway's own JWT, sent as a query parameter
            scope = {**request.scope, "headers": [*request.scope["headers"],
                                                  (b"authorization", f"Bearer {raw}".encode())]}
            request = Request(scope, request.receive)
        caller: Caller = await self._authenticator.authenticate(request)
        if Role.CLINICIAN in caller.roles:
            return Access(can_store=True)
        if Role.PATIENT in caller.roles and caller.patient_id is not None:
            return Access(patient=caller.patient_id)
        raise Forbidden("the token does not grant access to DICOMweb", {"required_roles": ["clinician", "patient"]})

    # -- GET -------------------------------------------------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        access = await self.access(request)
        target = parse_path(request.path_params["path"])
        if target.search is not None:
            return await self._search(request, access, target)
        assert target.study is not None
        await self._check_study(access, target.study, target.series)
        path = "/".join(["studies", target.study,
                         *(["series", target.series] if target.series else []),
                         *(["instances", target.instance] if target.instance else []), *target.rest])
        kind = target.rest[0] if target.rest else "retrieve"
        if kind == "frames" and target.rest[-1:] == ["rendered"]:
            kind = "rendered"
        _negotiate(request, _instance_offers(kind) if target.instance else OFFERS[kind])
        if kind == "metadata":
            return await self._metadata(path, self._base_for(request), access)
        if kind in ("rendered", "thumbnail", "frames", "bulk"):
            # These carry no PatientID to check, so the resource must be the caller's alone under its UID.
            await self._check_alone(access, Resource(target.study, target.series, target.instance))
        if kind in ("rendered", "thumbnail"):
            accept = PNG if PNG in request.headers.get("accept", "") and JPEG not in request.headers.get("accept", "") \
                else JPEG
            return await self._relay("GET", path.replace("/thumbnail", "/rendered"), "dicomweb_rendered", accept,
                                     rendering_params(request.query_params),
                                     extra=CROSS_ORIGIN)
        if kind == "frames":
            return await self._relay("GET", path, "dicomweb_frames", _multipart_accept(request, MULTIPART_OCTET), [])
        if kind == "bulk":
            return await self._relay("GET", path, "dicomweb_bulk", MULTIPART_OCTET, [], extra=CROSS_ORIGIN)
        return await self._retrieve(path, access, single=target.instance is not None and _wants_single_part(request))

    # -- POST: STOW-RS ---------------------------------------------------------------------------------------------

    async def store(self, request: Request) -> Response:
        """STOW-RS into a study: a diagnostic viewer token into its own study only, a clinician anywhere."""
        access = await self.access(request)
        path = request.path_params["path"].strip("/")
        parts = path.split("/")
        if parts[0] != "studies" or len(parts) > 2:
            raise NotFound("STOW-RS goes to /dicomweb/studies or /dicomweb/studies/{study}", {"path": path})
        study = parts[1] if len(parts) == 2 else None
        if study is not None and not is_valid_uid(study):
            raise bad_parameter("study UID in the path", "not a valid UID")
        if not access.can_store:
            raise Forbidden("this token may only read", {"required": "a diagnostic viewer token or a clinician"})
        if access.study is not None and study not in (None, access.study):
            raise NotFound("no such study", {"study": study})
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/related"):
            raise UnsupportedMediaType("STOW-RS takes multipart/related; type=\"application/dicom\"",
                                       {"content_type": content_type})
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
        return JSONResponse(self._rewrite(dataset.raw, self._base_for(request)), media_type=DICOM_JSON,
                            headers={"Cache-Control": "no-store"})

    async def _check_study(self, access: Access, study: str, series: str | None) -> None:
        """404 for a study (or series) outside the caller's reach, the same answer as for one that does not exist."""
        if access.study is not None and study != access.study:
            raise NotFound("no such study", {"study": study})
        if access.patient is not None and not await self._exams.ownership.holds(access.patient,
                                                                                 Resource(study, series)):
            raise NotFound("no such study", {"study": study})

    async def _check_alone(self, access: Access, resource: Resource) -> None:
        if access.patient is not None and not await self._exams.ownership.holds_only(access.patient, resource):
            raise NotFound("no such resource", {"uid": resource.uid})

    async def _search(self, request: Request, access: Access, target: Target) -> Response:
        _negotiate(request, OFFERS["metadata"])
        query = parse_qido(request.query_params)
        if target.study is not None:
            await self._check_study(access, target.study, target.series)
        # A scoped caller's filters narrow within its scope and never widen it: its own patient (and study) are
        # asked for whatever else the query says, and a filter naming something outside them finds nothing.
        drop: list[str] = []
        scope: list[tuple[str, str]] = []
        if access.study is not None:
            asked = query.match("StudyInstanceUID")
            if asked is not None and access.study not in uid_list("StudyInstanceUID", asked):
                return _datasets([])
            drop.append("StudyInstanceUID")
            if target.study is None:
                scope.append(("StudyInstanceUID", access.study))
        if access.patient is not None:
            asked = query.match("PatientID")
            if asked is not None and asked != access.patient:
                return _datasets([])
            drop.append("PatientID")
            scope += [("PatientID", self._upstream.profile.exact_value(access.patient)),
                      ("includefield", PATIENT_ID), ("includefield", STUDY_UID)]
        path = "/".join(filter(None, ["studies" if target.study else None, target.study,
                                      "series" if target.series else None, target.series, target.search]))
        found = await self._exams.qido(path, [*query.params(without=tuple(drop)), *scope])
        found = [ds for ds in found if _in_scope(ds, access)]
        return _datasets([self._rewrite(ds.raw, self._base_for(request)) for ds in found])

    async def _metadata(self, path: str, base: str, access: Access) -> Response:
        answer = await self._upstream.request("GET", path, operation="dicomweb_metadata",
                                              headers={"Accept": DICOM_JSON, "Forwarded": self._forwarded})
        if answer.status_code in (400, 404):
            raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
        if answer.status_code != 200:
            raise UpstreamFailed("the PACS refused the metadata", {"upstream_status": answer.status_code})
        try:
            datasets = DicomJson.list_from(answer.json())
        except ValueError:
            raise UpstreamFailed("the PACS answered the metadata with something other than DICOM JSON") from None
        kept = [ds for ds in datasets if _in_scope(ds, access)]
        if not kept:  # every dataset was another patient's: as if nothing were there
            raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
        return _datasets([self._rewrite(ds.raw, base) for ds in kept])

    def _base_for(self, request: Request) -> str:
        """The gateway's `/dicomweb` as this caller reaches it: PUBLIC_BASE_URL, or what a trusted proxy says
        (`Forwarded: proto=..;host=..`, else `X-Forwarded-Proto` and `X-Forwarded-Host`)."""
        client = request.client.host if request.client else None
        if client is None or client not in self._trusted_proxies:
            return self._public
        proto = host = None
        forwarded = request.headers.get("forwarded")
        if forwarded:
            first = forwarded.split(",")[0]
            pairs = dict(p.strip().split("=", 1) for p in first.split(";") if "=" in p)
            proto, host = pairs.get("proto", "").strip('"'), pairs.get("host", "").strip('"')
        else:
            proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
            host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if proto not in ("http", "https") or not host or not _HOST.fullmatch(host):
            return self._public
        return f"{proto}://{host}/dicomweb"

    def _rewrite(self, value: Any, base: str) -> Any:
        """RetrieveURL and BulkDataURI values point at the gateway's `/dicomweb` (the PACS writes its own)."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key == "BulkDataURI" and isinstance(item, str):
                    out[key] = _public_url(base, item)
                elif key == RETRIEVE_URL and isinstance(item, dict):
                    out[key] = {**item, "Value": [_public_url(base, v) if isinstance(v, str) else v
                                                  for v in item.get("Value", [])]}
                else:
                    out[key] = self._rewrite(item, base)
            return out
        if isinstance(value, list):
            return [self._rewrite(item, base) for item in value]
        return value

    async def _relay(self, method: str, path: str, operation: str, accept: str, params: list[tuple[str, str]], *,
                     extra: dict[str, str] | None = None) -> Response:
        upstream = await self._upstream.open_stream(method, path, operation=operation, params=params,
                                                    headers={"Accept": accept, "Forwarded": self._forwarded})
        await _expect(upstream, path)
        return self._relayed(upstream, extra)

    async def _retrieve(self, path: str, access: Access, *, single: bool) -> Response:
        """WADO-RS of a study, series or instance; for a scoped caller only the parts that are its patient's files.
        `single`: the client asked for one `application/dicom` body (Orthanc only sends multipart: it is unwrapped)."""
        headers = {"Accept": MULTIPART_DICOM_AS_STORED, "Forwarded": self._forwarded}
        upstream = await self._upstream.open_stream("GET", path, operation="dicomweb_retrieve", headers=headers)
        await _expect(upstream, path)
        if access.patient is None and not single:
            return self._relayed(upstream)
        try:
            content_type = upstream.headers.get("Content-Type", "")
            boundary = boundary_of(content_type)
            reader = PartReader(upstream.iter_raw(), boundary)
            body: AsyncIterator[bytes]
            if access.patient is None:
                found, body = await reader.next_part(), reader.body()
            else:
                parts = ScopedParts(reader, boundary, access.patient)
                found, body = await parts.first(), parts.body()
                if single and found:
                    body = parts.first_body()
        except MultipartError as exc:
            await upstream.aclose()
            raise UpstreamFailed("the PACS answered with a malformed multipart body", {"reason": str(exc)}) from None
        except BaseException:
            await upstream.aclose()
            raise
        if not found:
            await upstream.aclose()
            raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
        headers = {**PRIVATE}
        if single:
            if reader.length is not None:
                headers["Content-Length"] = str(reader.length)
            return UpstreamRelay([], body, upstream, media_type="application/dicom", headers=headers)
        return UpstreamRelay([], body, upstream, media_type=content_type, headers=headers)

    def _relayed(self, upstream: UpstreamStream, extra: dict[str, str] | None = None) -> Response:
        headers = {**PRIVATE, **(extra or {})}
        length = upstream.headers.get("Content-Length")
        if length is not None:
            headers["Content-Length"] = length
        return UpstreamRelay([], upstream.iter_raw(), upstream,
                             media_type=upstream.headers.get("Content-Type", "application/octet-stream"),
                             headers=headers)


def _in_scope(dataset: DicomJson, access: Access) -> bool:
    """Whether a dataset the PACS answered belongs to the caller (a dataset without the attribute does not)."""
    return ((access.patient is None or dataset.string(PATIENT_ID) == access.patient)
            and (access.study is None or dataset.string(STUDY_UID) == access.study))


def _datasets(datasets: list[Any]) -> Response:
    return JSONResponse(datasets, headers=PRIVATE, media_type=DICOM_JSON)


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _public_url(base: str, url: str) -> str:
    at = url.find("/studies/")
    return base + url[at:] if at >= 0 else url


async def _expect(upstream: UpstreamStream, path: str) -> None:
    if upstream.status_code == 200:
        return
    status = upstream.status_code
    await upstream.aclose()
    if status in (400, 404):
        raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
    if status == 406:
        raise NotAcceptable("the PACS cannot produce this representation", {"path": f"/dicomweb/{path}"})
    raise UpstreamFailed("the PACS failed", {"upstream_status": status})


_FRAME_TYPES = ("application/octet-stream", "image/jls", "image/jp2")  # what Orthanc 1.10 serves frames as
# What each kind of resource can be sent as (PS3.18 §8.7.3, as far as the gateway and Orthanc deliver it).
_DICOM_PARTS = MediaType("multipart", "related", "application/dicom")
OFFERS: dict[str, tuple[MediaType, ...]] = {
    "metadata": (MediaType("application", "dicom+json"), MediaType("application", "json")),
    "retrieve": (_DICOM_PARTS,),
    "rendered": (MediaType("image", "jpeg"), MediaType("image", "png")),
    "thumbnail": (MediaType("image", "jpeg"), MediaType("image", "png")),
    "frames": tuple(MediaType("multipart", "related", part) for part in _FRAME_TYPES),
    "bulk": (MediaType("multipart", "related", "application/octet-stream"),),
}


def _instance_offers(kind: str) -> tuple[MediaType, ...]:
    """An instance is also sent as one `application/dicom` body (unwrapped from the PACS's multipart)."""
    return (*OFFERS[kind], MediaType("application", "dicom")) if kind == "retrieve" else OFFERS[kind]


def _negotiate(request: Request, offered: tuple[MediaType, ...]) -> None:
    accept = request.headers.get("accept")
    try:
        satisfied = acceptable(accept, offered)
    except AcceptTooLong as exc:
        raise BadRequest(str(exc), {"header": "Accept", "max_length": MAX_ACCEPT_BYTES}) from None
    if not satisfied:
        raise NotAcceptable("no representation of this resource satisfies the Accept header",
                            {"accept": (accept or "")[:256], "available": [str(media) for media in offered]})


def _wants_single_part(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/dicom" in accept and "multipart/related" not in accept




def _multipart_accept(request: Request, default: str) -> str:
    """The client's Accept when it is one multipart/related value of a type the PACS serves; the default otherwise
    (for `type="*/*"`, lists, or none)."""
    accept = request.headers.get("accept", "")
    asked = ranges(accept)  # already bounded by _negotiate
    if len(asked) == 1 and (asked[0].type, asked[0].subtype) == ("multipart", "related") \
            and asked[0].params.get("type") in _FRAME_TYPES:
        return accept.strip()
    return default


class ViewerTokenIssuer:
    """`GET /token?studyUID=S&patientID=P&user=U&role=patient|diagnostic`."""

    def __init__(self, tokens: ViewerTokens, exams: Exams, settings: Settings) -> None:
        self._tokens = tokens
        self._exams = exams
        self._external = str(settings.viewer_get_token_endpoint) if settings.viewer_get_token_endpoint else None
        secret = settings.viewer_authorization_token
        self._external_auth = secret.get_secret_value() if secret else None

    async def token(self, request: Request, caller: Caller) -> Response:
        params = request.query_params
        study = params.get("studyUID", "")
        if not is_valid_uid(study):
            raise bad_parameter("studyUID", "required, a valid UID (1-64 digits and dots, no leading zeros)")
        role_name = params.get("role", ViewerRole.PATIENT.value)
        if role_name not in (ViewerRole.PATIENT.value, ViewerRole.DIAGNOSTIC.value):
            raise bad_parameter("role", "patient or diagnostic")
        role = ViewerRole(role_name)
        patient = params.get("patientID")
        if patient is not None:
            patient = validate_patient_id(patient, "patientID")
        if Role.CLINICIAN not in caller.roles:
            if role is not ViewerRole.PATIENT:
                raise Forbidden("a patient may only ask for role=patient", {"parameter": "role"})
            if patient is not None and patient != caller.patient_id:
                raise Forbidden("this token does not grant access to that patient's data", {"parameter": "patientID"})
            patient = caller.patient_id
        user = params.get("user", caller.subject)[:128]
        owner = await self._owner(study, patient)
        if owner is None:
            raise NotFound("no such study", {"studyUID": study})
        if self._external is not None:
            return await self._ask_external(study, owner, user, role)
        return JSONResponse({"token": self._tokens.issue(study=study, patient=owner, user=user, role=role),
                             "expiresIn": self._tokens.ttl_s}, headers={"Cache-Control": "no-store"})

    async def _ask_external(self, study: str, patient: str, user: str, role: ViewerRole) -> Response:
        """The external viewer's token service (VIEWER_GET_TOKEN_ENDPOINT), answered in this API's shape."""
        assert self._external is not None
        headers = {"Accept": "application/json"}
        if self._external_auth:
            headers["Authorization"] = f"Bearer {self._external_auth}"
        params = {"studyUID": study, "patientID": patient, "user": user, "role": role.value}
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(self._external, params=params, headers=headers)
            payload = answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            payload = None
            answer = None
        if not isinstance(payload, dict) or not isinstance(payload.get("token"), str):
            raise UpstreamFailed("the viewer's token service did not answer with a token",
                                 {"upstream_status": answer.status_code if answer is not None else None})
        expires = payload.get("expiresIn")
        return JSONResponse({"token": payload["token"],
                             "expiresIn": expires if isinstance(expires, int) else self._tokens.ttl_s},
                            headers={"Cache-Control": "no-store"})

    async def _owner(self, study: str, patient: str | None) -> str | None:
        """The patient whose part of the study the token opens: `patient` when the PACS holds the study for them;
        without one, the study's only patient (409 when it holds more than one: the caller must say whose)."""
        if patient is not None:
            return patient if await self._exams.ownership.holds(patient, Resource(study)) else None
        found = await self._exams.qido("studies", [("StudyInstanceUID", study), ("includefield", PATIENT_ID)])
        owners = {ds.string(PATIENT_ID) or "" for ds in found if ds.string(STUDY_UID) in (None, study)}
        if len(owners) > 1:
            raise Conflict("the study holds data of more than one patient: name one with patientID",
                           {"parameter": "patientID"})
        return owners.pop() if owners else None


def routes(dicomweb: DicomWeb, issuer: ViewerTokenIssuer, authenticator: Authenticator) -> list[Route]:
    return [
        Route("/token", guarded(authenticator, [Role.CLINICIAN, Role.PATIENT], issuer.token), methods=["GET"]),
        Route("/dicomweb/{path:path}", dicomweb.get, methods=["GET"]),
        Route("/dicomweb/{path:path}", dicomweb.store, methods=["POST"]),
    ]

