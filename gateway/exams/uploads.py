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

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.audit.facts import note_patient, note_study
from gateway.auth.callers import Caller, Role
from gateway.auth.scope import require_patient_access
from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON
from gateway.dicom.part10 import InstanceHeader
from gateway.dicom.tags import SOP_INSTANCE_UID
from gateway.edge.context import note
from gateway.edge.formdata import read_form
from gateway.errors import BadRequest, Conflict, Forbidden
from gateway.exams.files import FilePart as FilePart  # re-exported: gateway.viewer.dicomweb takes it from here
from gateway.exams.files import Upload, file_parts
from gateway.exams.links import ExamLinks
from gateway.exams.readback import verify_filed_patient
from gateway.exams.shared_uids import SharedUids, refuse_mixed, refuse_taken
from gateway.exams.stow import add_duplicates, failure_detail, point_at_gateway, store, stow_failures
from gateway.upstream.client import UpstreamClient
from gateway.upstream.orthanc import orthanc_id

_UIDS_PER_LOOKUP = 40  # keeps the lookup URL under ~3 KB


class ExamUploads:
    def __init__(self, *, upstream: UpstreamClient, links: ExamLinks, max_bytes: int, max_files: int) -> None:
        self._upstream = upstream
        self._shared = SharedUids(upstream=upstream)
        self._links = links
        self._max_bytes = max_bytes
        self._max_files = max_files

    async def upload(self, request: Request, caller: Caller) -> Response:
        body = await read_form(request, max_bytes=self._max_bytes, max_files=self._max_files,
                               refusal="POST /exams takes multipart/form-data", what="the upload")
        form = body if isinstance(body, FormData) else None
        try:
            dataset, fresh, duplicates = await self.accept(file_parts(body), caller)
        finally:
            if form is not None:
                await form.close()
        point_at_gateway(self._links, dataset, fresh)
        add_duplicates(dataset, duplicates)
        return JSONResponse([dataset.raw], headers={"Cache-Control": "no-store"})

    async def accept(self, parts: list[FilePart], caller: Caller, *, study: str | None = None
                     ) -> tuple[DicomJson, list[Upload], list[Upload]]:
        """Check the files (headers, scope, structure, duplicates) and store the fresh ones: (STOW-RS answer,
        stored, duplicates). Nothing is stored when any file is refused. `study`: every file must belong to it."""
        series = _SeriesLookups(self._upstream)
        try:
            uploads = await self._parse(parts, caller, series)
            for item in uploads:
                note_patient(item.header.patient_id)  # whose files these are, for the audit record
                note_study(item.header.study_uid)
                require_patient_access(caller, item.header.patient_id)
                if study is not None and item.header.study_uid != study:
                    raise Forbidden(f"{item.filename} belongs to another study than the one this token opens",
                                    {"file": item.filename, "StudyInstanceUID": item.header.study_uid})
            # The lookups (round trips to the PACS, the first sent while the other headers were read) run while the
            # files' structure is checked (CPU); nothing is stored before the duplicates are known.
            refuse_mixed(uploads)
            taken = asyncio.create_task(self._shared.taken(uploads))
            lookup = asyncio.create_task(self._split_duplicates(uploads, caller, series))
            # A clinician's upload on Orthanc does not wait for the shared-UID lookups: when they answer only after
            # the store has begun, a refusal removes the stored instances again (by their exact ids), the same
            # outcome as refusing first, without the lookups' latency on every upload.
            optimistic = Role.CLINICIAN in caller.roles and self._upstream.profile.deletes_instances_natively
            await asyncio.sleep(0)  # let the lookups send their requests before the CPU work below
            try:
                await self._check_structures(uploads)
                if not optimistic:
                    refuse_taken(await taken)
                fresh, duplicates = await lookup
                if not fresh:
                    raise Conflict(
                        "every instance is already stored",
                        {"failures": [failure_detail(item) for item in duplicates],
                         "response": [stow_failures(duplicates).raw]},
                    )
                if taken.done():
                    refuse_taken(taken.result())
                dataset = await store(self._upstream, fresh)
                if optimistic:
                    await self._shared.refuse_after_store(taken, fresh)
            finally:
                for task in (taken, lookup):
                    task.cancel()
                await asyncio.gather(taken, lookup, return_exceptions=True)
            if Role.CLINICIAN not in caller.roles:
                # Defence in depth: filed under exactly the checked PatientID, and no UID it took raced another
                # patient's upload into the same new UIDs.
                failures = await asyncio.gather(verify_filed_patient(self._upstream, fresh, dataset),
                                                self._shared.recheck_after_store(fresh), return_exceptions=True)
                for failure in failures:
                    if isinstance(failure, BaseException):
                        raise failure
        finally:
            await series.aclose()
        note(instances=len(fresh), duplicates=len(duplicates), upload_bytes=sum(item.size for item in fresh))
        return dataset, fresh, duplicates

    @staticmethod
    def add_duplicates(dataset: DicomJson, duplicates: list[Upload]) -> None:
        """The duplicates listed as failed in the STOW-RS answer (`gateway.exams.stow.add_duplicates`)."""
        add_duplicates(dataset, duplicates)

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


