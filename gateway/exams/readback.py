"""After a patient's upload: what the PACS filed, read back and compared with the PatientID the gateway checked.

`gateway.dicom.identifiers` accepts only PatientID bytes with one reading, so the PACS should file every instance under
exactly the checked ID. This is the defence in depth for the day a reader proves that wrong (a new DCMTK, another
PACS): the instances the PACS reports stored are looked up under the checked ID, and when any is filed elsewhere
the upload is answered 502, a structured security event is logged (no PatientID values: those are PHI), and the
instances are removed where the profile can (`deletes_instances_natively`).

Cost, on the success path: Orthanc, one native `GET /series/{id}` per series of the upload, concurrently, where
`id` is computed from the checked PatientID (`gateway.upstream.orthanc`), so a listed instance is filed under
exactly that ID by construction; other PACS, one QIDO-RS instance search per 40 instances, with `includefield=00100020`.
Clinicians' uploads are not read back: they may file any patient's data.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import structlog

from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON
from gateway.dicom.part10 import InstanceHeader
from gateway.dicom.tags import PATIENT_ID, REFERENCED_SOP_INSTANCE_UID, REFERENCED_SOP_SEQUENCE, SOP_INSTANCE_UID
from gateway.errors import UpstreamError, UpstreamFailed
from gateway.upstream.client import UpstreamClient
from gateway.upstream.orthanc import orthanc_id

log = structlog.get_logger(__name__)

_UIDS_PER_SEARCH = 40  # keeps the search URL under ~3 KB


class StoredFile(Protocol):
    """An uploaded file as `gateway.exams.uploads` holds it."""

    @property
    def header(self) -> InstanceHeader: ...


async def verify_filed_patient(upstream: UpstreamClient, files: Sequence[StoredFile], answer: DicomJson) -> None:
    """502 (after removing them where possible) when instances the STOW-RS `answer` lists as stored are not filed
    under the PatientID the gateway checked."""
    stored = {item.string(REFERENCED_SOP_INSTANCE_UID) for item in answer.items(REFERENCED_SOP_SEQUENCE)}
    unexpected = stored - {item.header.sop_instance_uid for item in files}
    if unexpected:
        # The PACS stored an instance the gateway never read: it parsed the bytes as another file than the gateway
        # did. Its UIDs may be anyone's, so nothing is deleted by them; the event is logged for an operator.
        log.warning("security_unexpected_instances", message="the PACS reports stored instances the gateway did "
                    "not send", instances=len(unexpected), profile=upstream.profile.name)
        raise UpstreamFailed("the PACS stored something else than the gateway checked",
                             {"reason": "unexpected_instances", "instances": len(unexpected)})
    checked = [item for item in files if item.header.sop_instance_uid in stored]
    if not checked:
        return
    if upstream.profile.orthanc_native_ids:
        misfiled = await _misfiled_in_orthanc(upstream, checked)
    else:
        misfiled = await _misfiled_by_search(upstream, checked)
    if not misfiled:
        return
    removed = 0
    if upstream.profile.deletes_instances_natively:
        removed = sum(await asyncio.gather(*(_remove(upstream, item) for item in misfiled)))
    log.warning("security_patient_id_mismatch", message="the PACS filed uploaded instances under another "
                "PatientID than the gateway checked", instances=len(misfiled), removed=removed,
                uploaded=len(checked), profile=upstream.profile.name)
    raise UpstreamFailed(
        "the PACS filed the upload under another PatientID than the gateway checked"
        + ("; the instances were removed" if removed == len(misfiled) else ""),
        {"reason": "patient_id_mismatch", "instances": [item.header.sop_instance_uid for item in misfiled],
         "removed": removed},
    )


async def _misfiled_in_orthanc(upstream: UpstreamClient, files: list[StoredFile]) -> list[StoredFile]:
    by_series: dict[str, list[StoredFile]] = defaultdict(list)
    for item in files:
        h = item.header
        by_series[orthanc_id(h.patient_id, h.study_uid, h.series_uid)].append(item)

    async def held(series_id: str) -> set[str]:
        series = await upstream.native_json(f"series/{series_id}", operation="stow_readback")
        return set(series.get("Instances", [])) if isinstance(series, dict) else set()

    listed = await asyncio.gather(*(held(series_id) for series_id in by_series))
    return [item for items, instances in zip(by_series.values(), listed, strict=True) for item in items
            if orthanc_id(item.header.patient_id, item.header.study_uid, item.header.series_uid,
                          item.header.sop_instance_uid) not in instances]


async def _misfiled_by_search(upstream: UpstreamClient, files: list[StoredFile]) -> list[StoredFile]:
    filed: dict[str, set[str | None]] = defaultdict(set)
    uids = [item.header.sop_instance_uid for item in files]
    for start in range(0, len(uids), _UIDS_PER_SEARCH):
        batch = uids[start : start + _UIDS_PER_SEARCH]
        response = await upstream.request(
            "GET", "instances", operation="stow_readback", headers={"Accept": DICOM_JSON},
            params=[("SOPInstanceUID", ",".join(batch)), ("includefield", PATIENT_ID),
                    ("limit", str(len(batch) * 4))],
        )
        if response.status_code == 200 and response.content:
            for ds in DicomJson.list_from(response.json()):
                filed[ds.string(SOP_INSTANCE_UID) or ""].add(ds.string(PATIENT_ID))
    # Exactly the checked ID: not found (nothing to compare), or found under a second patient too, is a mismatch.
    return [item for item in files if filed.get(item.header.sop_instance_uid) != {item.header.patient_id}]


async def _remove(upstream: UpstreamClient, item: StoredFile) -> int:
    """Delete the instances holding this SOP Instance UID; 1 when all of them were deleted, else 0.

    Only a patient's upload is read back, and its instances are fresh archive-wide: `ExamUploads` looks each SOP
    Instance UID up anywhere in the archive before storing and never sends one already held. So whatever holds the
    UID now was stored by this upload, whichever patient the PACS filed it under (and whatever bytes it kept)."""
    try:
        found = await upstream.native_lookup(item.header.sop_instance_uid)
    except UpstreamError as exc:  # as a failed DELETE (`native_delete`): the 502 and its security event still go out
        log.warning("upstream_cleanup_failed", operation="stow_readback_remove", error=exc.code, message=exc.message)
        return 0
    # A file counts as removed when every instance holding its UID was deleted: one copy deleted must not cover
    # another left in place (the answer's "removed" and the security event count files).
    instances = [resource_id for kind, resource_id in found if kind == "Instance"]
    deleted = [await upstream.native_delete(i, operation="stow_readback_remove") for i in instances]
    return int(bool(deleted) and all(deleted))
