"""`POST /exams`: multipart/form-data DICOM files in, STOW-RS out (PS3.18 §10.5), all or nothing on bad input.

1. The body is parsed as it arrives; each `file` part is spooled to a temporary file (memory up to 1 MiB, then disk)
   and the total is capped at `EXAMS_MAX_UPLOAD_BYTES` (413 as soon as it is passed).
2. Each file's header is read (never its pixel data) and checked; one bad file refuses the whole upload (422), a
   file of another patient refuses it for a patient caller (403): nothing is stored in either case.
3. Instances the upstream already holds are not sent again (Orthanc would report them stored and keep its copy):
   they are reported as failed with reason 45070; when every instance is a duplicate the answer is 409.
4. The rest stream to the upstream in one STOW-RS request, preambles replaced with zeros, and the STOW-RS answer
   comes back with its RetrieveURLs pointing at the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.callers import Caller, Role
from gateway.auth.scope import require_patient_access
from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON
from gateway.dicom.part10 import (
    PREAMBLE_LENGTH,
    ZERO_PREAMBLE,
    InstanceHeader,
    check_data_structure,
    check_file_structure,
    read_header,
    read_header_data,
)
from gateway.dicom.tags import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    SOP_INSTANCE_UID,
)
from gateway.edge.context import note
from gateway.edge.formdata import FormField, read_form
from gateway.edge.multipart import PART_SEPARATOR, new_boundary, related_closing, related_part_header
from gateway.errors import BadRequest, Conflict, Forbidden, UnprocessableContent
from gateway.exams.links import ExamLinks
from gateway.exams.readback import verify_filed_patient
from gateway.upstream.client import UpstreamClient, UpstreamStream
from gateway.upstream.orthanc import orthanc_id
from gateway.upstream.ownership import Ownership, Resource

log = structlog.get_logger(__name__)

# Azure DICOM service's failure reason for "an instance with these UIDs is already stored"; clients of the product
# this API comes from look for it.
ALREADY_STORED = 45070
# Failure reasons that mean "already there": Azure's 45070 and 0x0111, "Duplicate SOP Instance" (PS3.7 §C.4.2).
_DUPLICATE_REASONS = frozenset({ALREADY_STORED, 0x0111})
_CHUNK = 1024 * 1024
_UIDS_PER_LOOKUP = 40  # keeps the lookup URL under ~3 KB


@dataclass(frozen=True, slots=True)
class FilePart:
    """One uploaded file: a view of a request body held in memory, or a file spooled by Starlette's parser."""

    filename: str
    data: memoryview | None = None
    spooled: UploadFile | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.spooled.size or 0) if self.spooled else 0

    @property
    def blocks(self) -> bool:
        """Reading it blocks (a file rolled to disk): read it from a worker thread."""
        return self.spooled is not None and not self.spooled._in_memory

    def header(self) -> InstanceHeader:
        if self.data is not None:
            return read_header_data(self.data, self.filename)
        assert self.spooled is not None
        return read_header(self.spooled.file, self.filename, check=False)

    def check_structure(self) -> None:
        if self.data is not None:
            check_data_structure(self.data, self.filename)
        else:
            assert self.spooled is not None
            check_file_structure(self.spooled.file, self.filename, in_memory=self.spooled._in_memory)

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The file after its preamble, in pieces of at most `_CHUNK` bytes."""
        if self.data is not None:
            yield self.data[PREAMBLE_LENGTH:]
            return
        assert self.spooled is not None
        await self.spooled.seek(PREAMBLE_LENGTH)
        while chunk := await self.spooled.read(_CHUNK):
            yield chunk


@dataclass(frozen=True, slots=True)
class Upload:
    part: FilePart
    header: InstanceHeader

    @property
    def filename(self) -> str:
        return self.part.filename

    @property
    def size(self) -> int:
        return self.part.size


class ExamUploads:
    def __init__(self, upstream: UpstreamClient, links: ExamLinks, max_bytes: int, max_files: int) -> None:
        self._upstream = upstream
        self._ownership = Ownership(upstream)
        self._links = links
        self._max_bytes = max_bytes
        self._max_files = max_files

    async def upload(self, request: Request, caller: Caller) -> Response:
        body = await read_form(request, max_bytes=self._max_bytes, max_files=self._max_files,
                               refusal="POST /exams takes multipart/form-data", what="the upload")
        form = body if isinstance(body, FormData) else None
        try:
            dataset, fresh, duplicates = await self.accept(_file_parts(body), caller)
        finally:
            if form is not None:
                await form.close()
        self._point_at_gateway(dataset, fresh)
        self.add_duplicates(dataset, duplicates)
        return JSONResponse([dataset.raw], headers={"Cache-Control": "no-store"})

    async def accept(self, parts: list[FilePart], caller: Caller, *, study: str | None = None
                     ) -> tuple[DicomJson, list[Upload], list[Upload]]:
        """Check the files (headers, scope, structure, duplicates) and store the fresh ones: (STOW-RS answer,
        stored, duplicates). Nothing is stored when any file is refused. `study`: every file must belong to it."""
        series = _SeriesLookups(self._upstream)
        try:
            uploads = await self._parse(parts, caller, series)
            for item in uploads:
                require_patient_access(caller, item.header.patient_id)
                if study is not None and item.header.study_uid != study:
                    raise Forbidden(f"{item.filename} belongs to another study than the one this token opens",
                                    {"file": item.filename, "StudyInstanceUID": item.header.study_uid})
            # The lookups (round trips to the PACS, the first sent while the other headers were read) run while the
            # files' structure is checked (CPU); nothing is stored before the duplicates are known.
            _refuse_mixed(uploads)
            taken = asyncio.create_task(self._taken_uids(uploads))
            lookup = asyncio.create_task(self._split_duplicates(uploads, caller, series))
            # A clinician's upload on Orthanc does not wait for the shared-UID lookups: when they answer only after
            # the store has begun, a refusal removes the stored instances again (by their exact ids), the same
            # outcome as refusing first, without the lookups' latency on every upload.
            optimistic = Role.CLINICIAN in caller.roles and self._upstream.profile.deletes_instances_natively
            await asyncio.sleep(0)  # let the lookups send their requests before the CPU work below
            try:
                await self._check_structures(uploads)
                if not optimistic:
                    _refuse_taken(await taken)
                fresh, duplicates = await lookup
                if not fresh:
                    raise Conflict(
                        "every instance is already stored",
                        {"failures": [_failure_detail(item) for item in duplicates],
                         "response": [_stow_failures(duplicates).raw]},
                    )
                if taken.done():
                    _refuse_taken(taken.result())
                dataset = await self._store(fresh)
                if optimistic:
                    await self._refuse_taken_after_store(await taken, fresh)
            finally:
                for task in (taken, lookup):
                    task.cancel()
                await asyncio.gather(taken, lookup, return_exceptions=True)
            if Role.CLINICIAN not in caller.roles:
                # Defence in depth: filed under exactly the checked PatientID, and no UID it took raced another
                # patient's upload into the same new UIDs.
                failures = await asyncio.gather(verify_filed_patient(self._upstream, fresh, dataset),
                                                self._recheck_after_store(fresh), return_exceptions=True)
                for failure in failures:
                    if isinstance(failure, BaseException):
                        raise failure
        finally:
            await series.aclose()
        note(instances=len(fresh), duplicates=len(duplicates), upload_bytes=sum(item.size for item in fresh))
        return dataset, fresh, duplicates

    async def _taken_uids(self, uploads: list[Upload]) -> set[str]:
        """The upload's study and series UIDs under which the PACS already holds another patient's data
        (`gateway.upstream.ownership`); an upload holding them is 409 `uid_in_use`, without saying whose."""
        by_patient: dict[str, set[Resource]] = {}
        for header in (item.header for item in uploads):
            by_patient.setdefault(header.patient_id, set()).update(
                (Resource(header.study_uid), Resource(header.study_uid, header.series_uid)))
        answers = await asyncio.gather(*(self._ownership.held_by_others(patient, resources)
                                         for patient, resources in by_patient.items()))
        return set().union(*answers)

    async def _refuse_taken_after_store(self, taken: set[str], stored: list[Upload]) -> None:
        if not taken:
            return
        removed = await self._remove(stored)
        log.warning("security_shared_uid_upload", message="an upload named UIDs that hold another patient's data; "
                    "its stored instances were removed", instances=len(stored), removed=removed)
        _refuse_taken(taken)

    async def _recheck_after_store(self, stored: list[Upload]) -> None:
        """After a patient's upload: the checks before the store cannot see another upload racing into the same new
        study, series or SOP Instance UIDs. When another patient's data now shares one with this upload, this
        upload's instances are removed (where the profile can: the first stored keeps the UIDs) and it is 409."""
        patient_id = stored[0].header.patient_id  # a patient's upload holds that patient's files only
        resources = {r for h in (item.header for item in stored) for r in (
            Resource(h.study_uid), Resource(h.study_uid, h.series_uid),
            Resource(h.study_uid, h.series_uid, h.sop_instance_uid))}
        try:
            _refuse_taken(await self._ownership.held_by_others(patient_id, resources))
        except Conflict:
            removed = await self._remove(stored)
            log.warning("security_upload_race", message="an upload raced another patient's into the same UIDs",
                        instances=len(stored), removed=removed)
            raise

    async def _remove(self, stored: list[Upload]) -> int:
        """Delete exactly these instances (this patient's, by their computed Orthanc ids); how many were deleted."""
        if not self._upstream.profile.deletes_instances_natively:
            return 0
        ids = [orthanc_id(h.patient_id, h.study_uid, h.series_uid, h.sop_instance_uid)
               for h in (item.header for item in stored)]
        statuses = await asyncio.gather(*(
            self._upstream.native_call("DELETE", f"instances/{i}", operation="stow_race_remove") for i in ids))
        return sum(status == 200 for status, _ in statuses)

    @staticmethod
    def add_duplicates(dataset: DicomJson, duplicates: list[Upload]) -> None:
        if duplicates:
            failed = [*dataset.items(FAILED_SOP_SEQUENCE), *_stow_failures(duplicates).items(FAILED_SOP_SEQUENCE)]
            dataset.set_sequence(FAILED_SOP_SEQUENCE, failed)

    async def _parse(self, parts: list[FilePart], caller: Caller, series: _SeriesLookups) -> list[Upload]:
        if not parts:
            raise BadRequest("no DICOM file: send one or more parts named 'file'", {"field": "file"})
        # Files spooled to disk are read in one trip to a worker thread (their reads block); in-memory ones here, a
        # thread hop costs more. The first file's series is looked up while the other headers are read.
        blocking = any(part.blocks for part in parts)
        first = await run_in_threadpool(parts[0].header) if blocking else parts[0].header()
        if self._looks_up_series() and _may_touch(caller, first.patient_id):
            series.start(first)
        rest = parts[1:]
        if blocking:
            headers = [first, *await run_in_threadpool(lambda: [part.header() for part in rest])]
        else:
            headers = [first, *(part.header() for part in rest)]
        return [Upload(part, header) for part, header in zip(parts, headers, strict=True)]

    def _looks_up_series(self) -> bool:
        profile = self._upstream.profile
        return profile.silently_accepts_duplicates and profile.orthanc_native_ids

    async def _check_structures(self, uploads: list[Upload]) -> None:
        def check_all() -> None:
            for item in uploads:
                item.part.check_structure()

        if any(item.part.blocks for item in uploads):
            await run_in_threadpool(check_all)
        else:
            check_all()

    async def _split_duplicates(
        self, uploads: list[Upload], caller: Caller, series: _SeriesLookups
    ) -> tuple[list[Upload], list[Upload]]:
        """Instances sent twice in one upload, or already held upstream where the upstream would not say so.

        Orthanc: the exact instance (same patient, study, series and SOP Instance UID) is looked up by computed ids,
        one key lookup per series. A patient's upload is also checked for SOP Instance UIDs used anywhere in the archive
        (a QIDO-RS query, whose cost grows with the archive in Orthanc 1.10): two instances sharing a UID make
        Orthanc refuse WADO-RS for both, so a patient who knew another's UID could otherwise hide that instance.
        """
        seen: set[str] = set()
        fresh: list[Upload] = []
        duplicates: list[Upload] = []
        for item in uploads:
            uid = item.header.sop_instance_uid
            (duplicates if uid in seen else fresh).append(item)
            seen.add(uid)
        if not self._upstream.profile.silently_accepts_duplicates:
            return fresh, duplicates
        if self._looks_up_series():
            for item in fresh:
                series.start(item.header)
            stored = {item.header.sop_instance_uid for item in fresh if await series.holds(item.header)}
            if Role.CLINICIAN not in caller.roles:
                stored |= await self._stored_instances([i.header.sop_instance_uid for i in fresh])
        else:
            stored = await self._stored_instances([item.header.sop_instance_uid for item in fresh])
        duplicates += [item for item in fresh if item.header.sop_instance_uid in stored]
        fresh = [item for item in fresh if item.header.sop_instance_uid not in stored]
        return fresh, duplicates

    async def _stored_instances(self, uids: list[str]) -> set[str]:
        stored: set[str] = set()
        for start in range(0, len(uids), _UIDS_PER_LOOKUP):
            batch = uids[start : start + _UIDS_PER_LOOKUP]
            # UID list matching (PS3.4 §C.2.2.2.2): one query for many UIDs.
            response = await self._upstream.request(
                "GET", "instances", operation="stow_duplicate_check", headers={"Accept": DICOM_JSON},
                params=[("SOPInstanceUID", ",".join(batch)), ("limit", str(len(batch) * 4))],
            )
            if response.status_code in (200, 204) and response.content:
                wanted = set(batch)
                stored.update(
                    uid for ds in DicomJson.list_from(response.json())
                    if (uid := ds.string(SOP_INSTANCE_UID)) in wanted
                )
        return stored

    async def _store(self, uploads: list[Upload]) -> DicomJson:
        boundary = new_boundary()
        heads = [related_part_header(boundary, "application/dicom", item.size) for item in uploads]
        closing = related_closing(boundary)
        length = sum(len(h) + item.size + len(PART_SEPARATOR) for h, item in zip(heads, uploads, strict=True))
        length += len(closing)

        async def body() -> AsyncIterator[bytes | memoryview]:
            # Small pieces are gathered into writes of up to 1 MiB: one socket write per piece would cost more CPU
            # than the bytes themselves for small instances.
            pending = bytearray()
            for head, item in zip(heads, uploads, strict=True):
                pending += head
                pending += ZERO_PREAMBLE  # PS3.10 §7.1: the preamble as the gateway stores it
                async for chunk in item.part.chunks():
                    if len(pending) + len(chunk) > _CHUNK:
                        if pending:
                            yield bytes(pending)
                            pending.clear()
                        if len(chunk) >= _CHUNK // 2:
                            yield chunk  # a large piece goes as it is, not copied
                            continue
                    pending += chunk
                pending += PART_SEPARATOR
            pending += closing
            yield bytes(pending)

        content: bytes | AsyncIterator[bytes | memoryview] = body()
        if length <= _CHUNK:  # small: one buffer, one write upstream (aiohttp warns about larger byte bodies)
            content = b"".join([chunk async for chunk in body()])
        response = await self._upstream.open_stream(
            "POST", "studies", operation="stow", content=content,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Content-Length": str(length),
                "Accept": DICOM_JSON,
            },
        )
        try:
            payload = await response.read()
        finally:
            await response.aclose()
        return _stow_answer(response, payload)

    def _point_at_gateway(self, dataset: DicomJson, uploads: list[Upload]) -> None:
        """RetrieveURLs name the gateway's `/exams` paths, never the internal PACS (PS3.18 §10.5.3)."""
        by_uid = {item.header.sop_instance_uid: item.header for item in uploads}
        for item in dataset.items(REFERENCED_SOP_SEQUENCE):
            header = by_uid.get(item.string(REFERENCED_SOP_INSTANCE_UID) or "")
            if header is None:
                item.remove(RETRIEVE_URL)
            else:
                item.set_string(RETRIEVE_URL, "UR", self._links.instance(
                    header.study_uid, header.series_uid, header.sop_instance_uid, header.patient_id))
        for item in dataset.items(FAILED_SOP_SEQUENCE):
            item.remove(RETRIEVE_URL)
        studies = {(h.study_uid, h.patient_id) for h in by_uid.values()}
        if len(studies) == 1:
            study_uid, patient_id = studies.pop()
            dataset.set_string(RETRIEVE_URL, "UR", self._links.study(study_uid, patient_id))
        else:
            dataset.remove(RETRIEVE_URL)  # an upload across studies has no one study to point at


def _refuse_mixed(uploads: list[Upload]) -> None:
    """409 when the upload itself files two patients' data under one study or series UID."""
    owners: dict[str, set[str]] = {}
    for header in (item.header for item in uploads):
        for uid in (header.study_uid, header.series_uid):
            owners.setdefault(uid, set()).add(header.patient_id)
    mixed = sorted(uid for uid, patients in owners.items() if len(patients) > 1)
    if mixed:
        raise Conflict("the upload holds files of more than one patient under one study or series UID",
                       {"reason": "uid_shared_within_upload", "uids": mixed})


def _refuse_taken(uids: set[str]) -> None:
    if uids:
        raise Conflict("a UID of the upload already holds another patient's data",
                       {"reason": "uid_in_use", "uids": sorted(uids)})


def _file_parts(body: list[FormField] | FormData) -> list[FilePart]:
    """The uploaded files, in order; 400 for a field not named `file`, 422 for a text field."""
    items: list[tuple[str, str | None, memoryview | UploadFile | str]]
    if isinstance(body, FormData):
        items = [(name, value.filename if isinstance(value, UploadFile) else None, value)
                 for name, value in body.multi_items()]
    else:
        items = [(f.name, f.filename, f.value if f.filename is not None else "") for f in body]
    parts: list[FilePart] = []
    for index, (name, filename, value) in enumerate(items):
        if name != "file":
            raise BadRequest(f"unexpected form field {name!r}: send the DICOM files as parts named 'file'",
                             {"field": name})
        fallback = f"part {index + 1}"
        if isinstance(value, str):
            raise UnprocessableContent(f"{fallback} is a text field, not a file", {"file": fallback})
        if isinstance(value, memoryview):
            parts.append(FilePart(filename or fallback, data=value))
        else:
            parts.append(FilePart(filename or fallback, spooled=value))
    return parts


def _may_touch(caller: Caller, patient_id: str) -> bool:
    try:
        require_patient_access(caller, patient_id)
    except Forbidden:
        return False
    return True


class _SeriesLookups:
    """Orthanc's list of the instances it holds per series of an upload, each series asked once, concurrently."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream
        self._held: dict[str, asyncio.Task[set[str]]] = {}

    def start(self, header: InstanceHeader) -> None:
        series_id = orthanc_id(header.patient_id, header.study_uid, header.series_uid)
        if series_id not in self._held:
            self._held[series_id] = asyncio.create_task(self._instances(series_id))

    async def holds(self, header: InstanceHeader) -> bool:
        """Whether Orthanc holds this exact instance (`start` must have been called for its series)."""
        series_id = orthanc_id(header.patient_id, header.study_uid, header.series_uid)
        held = await self._held[series_id]
        return orthanc_id(header.patient_id, header.study_uid, header.series_uid, header.sop_instance_uid) in held

    async def _instances(self, series_id: str) -> set[str]:
        series = await self._upstream.native_resource("series", series_id)
        return set(series.get("Instances", [])) if isinstance(series, dict) else set()

    async def aclose(self) -> None:
        """Cancel lookups the upload no longer needs (it was refused before they were read)."""
        for task in self._held.values():
            task.cancel()
        await asyncio.gather(*self._held.values(), return_exceptions=True)


def _stow_answer(response: UpstreamStream, payload: bytes) -> DicomJson:
    """The STOW-RS response dataset; an upstream refusal of instances the gateway found valid becomes 409 or 422."""
    try:
        decoded = json.loads(payload)  # Orthanc sends it with no Content-Type (measured, docs/tests.md)
        if isinstance(decoded, list):
            dataset = DicomJson.list_from(decoded)[0]
        else:
            dataset = DicomJson(decoded if isinstance(decoded, dict) else {})
    except (ValueError, IndexError, TypeError):
        dataset = DicomJson({})
    if response.status_code in (200, 202):
        return dataset
    reasons = [item.integer(FAILURE_REASON) for item in dataset.items(FAILED_SOP_SEQUENCE)]
    details = {"upstream_status": response.status_code, "failure_reasons": reasons}
    if response.status_code == 409 and reasons and all(r in _DUPLICATE_REASONS for r in reasons):
        raise Conflict("every instance is already stored", details)
    raise UnprocessableContent("the PACS refused to store the instances", details)


def _failure_detail(item: Upload) -> dict[str, object]:
    return {"file": item.filename, "SOPInstanceUID": item.header.sop_instance_uid, "FailureReason": ALREADY_STORED}


def _stow_failures(duplicates: list[Upload]) -> DicomJson:
    """A STOW-RS response dataset listing `duplicates` in its FailedSOPSequence (PS3.18 Table 10.5.3-1)."""
    dataset = DicomJson({})
    items = []
    for item in duplicates:
        failed = DicomJson({})
        failed.set_string(REFERENCED_SOP_CLASS_UID, "UI", item.header.sop_class_uid)
        failed.set_string(REFERENCED_SOP_INSTANCE_UID, "UI", item.header.sop_instance_uid)
        failed.set_integer(FAILURE_REASON, "US", ALREADY_STORED)
        items.append(failed)
    dataset.set_sequence(FAILED_SOP_SEQUENCE, items)
    return dataset

