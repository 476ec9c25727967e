"""Study, series and SOP Instance UIDs an upload shares with another patient's data
(tests/security/test_shared_uids.py, test_upload_race.py).

Two patients' instances under one UID make Orthanc answer for both (or refuse WADO-RS for both), so an upload is
refused (409) when it files two patients under one UID itself (`refuse_mixed`), when a UID it names already holds
another patient's data (`SharedUids.taken`, asked of the PACS through `gateway.upstream.ownership`), and, after a
patient's upload, when another upload raced into the same new UIDs (`SharedUids.recheck_after_store`): then this
upload's instances are removed again where the profile can, by their exact Orthanc ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog

from gateway.errors import Conflict
from gateway.exams.files import Upload
from gateway.upstream.client import UpstreamClient
from gateway.upstream.orthanc import orthanc_id
from gateway.upstream.ownership import Ownership, Resource

log = structlog.get_logger(__name__)


class SharedUids:
    def __init__(self, *, upstream: UpstreamClient) -> None:
        self._upstream = upstream
        self._ownership = Ownership(upstream)

    async def taken(self, uploads: list[Upload]) -> set[str]:
        """The upload's study and series UIDs under which the PACS already holds another patient's data
        (`gateway.upstream.ownership`); an upload holding them is 409 `uid_in_use`, without saying whose."""
        by_patient: dict[str, set[Resource]] = {}
        for header in (item.header for item in uploads):
            by_patient.setdefault(header.patient_id, set()).update(
                (Resource(header.study_uid), Resource(header.study_uid, header.series_uid)))
        answers = await asyncio.gather(*(self._ownership.held_by_others(patient, resources)
                                         for patient, resources in by_patient.items()))
        return set().union(*answers)

    async def refuse_after_store(self, lookups: Awaitable[set[str]], stored: list[Upload]) -> None:
        """After an upload stored before its `taken` lookups answered: 409 and the stored instances removed when a
        UID holds another patient's data. When the lookups fail, nothing says the UIDs were free: the stored
        instances are removed too and the failure is raised (fail closed)."""
        try:
            taken = await lookups
        except Exception:
            removed = await self.remove(stored)
            log.warning("security_shared_uid_check_failed", message="the shared-UID lookups of an upload stored "
                        "before they answered failed; its stored instances were removed", instances=len(stored),
                        removed=removed)
            raise
        if not taken:
            return
        removed = await self.remove(stored)
        log.warning("security_shared_uid_upload", message="an upload named UIDs that hold another patient's data; "
                    "its stored instances were removed", instances=len(stored), removed=removed)
        refuse_taken(taken)

    async def recheck_after_store(self, stored: list[Upload]) -> None:
        """After a patient's upload: the checks before the store cannot see another upload racing into the same new
        study, series or SOP Instance UIDs. When another patient's data now shares one with this upload, this
        upload's instances are removed (where the profile can: the first stored keeps the UIDs) and it is 409."""
        patient_id = stored[0].header.patient_id  # a patient's upload holds that patient's files only
        resources = {r for h in (item.header for item in stored) for r in (
            Resource(h.study_uid), Resource(h.study_uid, h.series_uid),
            Resource(h.study_uid, h.series_uid, h.sop_instance_uid))}
        try:
            refuse_taken(await self._ownership.held_by_others(patient_id, resources))
        except Conflict:
            removed = await self.remove(stored)
            log.warning("security_upload_race", message="an upload raced another patient's into the same UIDs",
                        instances=len(stored), removed=removed)
            raise

    async def remove(self, stored: list[Upload]) -> int:
        """Delete exactly these instances (this patient's, by their computed Orthanc ids); how many were deleted."""
        if not self._upstream.profile.deletes_instances_natively:
            return 0
        ids = [orthanc_id(h.patient_id, h.study_uid, h.series_uid, h.sop_instance_uid)
               for h in (item.header for item in stored)]
        deleted = await asyncio.gather(*(self._upstream.native_delete(i, operation="stow_race_remove") for i in ids))
        return sum(deleted)


def refuse_mixed(uploads: list[Upload]) -> None:
    """409 when the upload itself files two patients' data under one study or series UID."""
    owners: dict[str, set[str]] = {}
    for header in (item.header for item in uploads):
        for uid in (header.study_uid, header.series_uid):
            owners.setdefault(uid, set()).add(header.patient_id)
    mixed = sorted(uid for uid, patients in owners.items() if len(patients) > 1)
    if mixed:
        raise Conflict("the upload holds files of more than one patient under one study or series UID",
                       {"reason": "uid_shared_within_upload", "uids": mixed})


def refuse_taken(uids: set[str]) -> None:
    if uids:
        raise Conflict("a UID of the upload already holds another patient's data",
                       {"reason": "uid_in_use", "uids": sorted(uids)})
