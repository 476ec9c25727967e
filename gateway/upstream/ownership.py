"""Whose data a study, series or instance is, asked of the PACS itself.

UIDs are neither secret nor unique per patient: in a real archive one StudyInstanceUID (or SeriesInstanceUID, or even
SOPInstanceUID) can hold files of two patients, from data that reached the PACS around the gateway. Orthanc keeps
such files apart as two resources, named by the SHA-1 of the PatientID and the UIDs (`gateway.upstream.orthanc`); a
standard PACS keeps one record and serves whatever it holds under it. So there are three different questions:

- `holds`: the PACS holds this resource for this patient (perhaps for others too). Enough to open a path whose
  answer is then filtered item by item (searches, metadata, multipart retrievals).
- `holds_only`: ... and for nobody else. Needed before serving what cannot be split per patient: a rendered image,
  a frame, bulk data, a thumbnail.
- `held_by_others`: the study and series UIDs of an upload that already hold another patient's data. Storing into
  them would mix two patients under one UID, and in Orthanc make the study unreachable at the study and series
  levels of WADO-RS (both answer 404 for an ambiguous UID, measured), so such uploads are refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON
from gateway.dicom.tags import PATIENT_ID, SERIES_UID, SOP_INSTANCE_UID, STUDY_UID
from gateway.errors import UpstreamFailed
from gateway.upstream.client import UpstreamClient
from gateway.upstream.orthanc import orthanc_id

_PAGE = 20  # items per ownership query: more copies of one UID than this is treated as shared (fail closed)
_UIDS_PER_QUERY = 40  # keeps the URL of a UID-list query under ~3 KB


@dataclass(frozen=True, slots=True)
class Resource:
    """A study, or a series in it, or an instance in that."""

    study: str
    series: str | None = None
    instance: str | None = None

    @property
    def level(self) -> str:
        return "Instance" if self.instance else "Series" if self.series else "Study"

    @property
    def uid(self) -> str:
        return self.instance or self.series or self.study

    def ids(self) -> tuple[str, ...]:
        return tuple(uid for uid in (self.study, self.series, self.instance) if uid is not None)


class Ownership:
    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream
        self._native = upstream.profile.orthanc_native_ids

    async def holds(self, patient_id: str, resource: Resource) -> bool:
        """Whether the PACS holds `resource` for exactly this patient."""
        if self._native:  # a key lookup: the PatientID is part of the id, so a hit is this patient's by construction
            return await self._upstream.native_exists(_KINDS[resource.level], orthanc_id(patient_id, *resource.ids()))
        found = await self._copies(resource, patient_id)
        return any(ds.string(PATIENT_ID) == patient_id for ds in found)

    async def holds_only(self, patient_id: str, resource: Resource) -> bool:
        """Whether the PACS holds `resource` for this patient and for no other patient under the same UID."""
        if self._native:
            looked_up = await self._upstream.native_lookup(resource.uid)
            copies = {resource_id for kind, resource_id in looked_up if kind == resource.level}
            return copies == {orthanc_id(patient_id, *resource.ids())}
        found = await self._copies(resource)
        return 0 < len(found) < _PAGE and all(ds.string(PATIENT_ID) == patient_id for ds in found)

    async def held_by_others(self, patient_id: str, resources: Iterable[Resource]) -> set[str]:
        """Of these studies, series and instances, the UIDs under which the PACS holds another patient's data.

        On Orthanc, from its index (`/tools/lookup`): its QIDO-RS answers drop non-ASCII characters of a PatientID,
        so they cannot tell two patients apart whose IDs differ only there."""
        wanted = sorted(set(resources), key=lambda r: r.ids())
        if self._native:
            answers = await asyncio.gather(*(self._upstream.native_lookup(r.uid) for r in wanted))
            return {
                r.uid for r, found in zip(wanted, answers, strict=True)
                if {i for kind, i in found if kind == r.level} - {orthanc_id(patient_id, *r.ids())}
            }
        taken: set[str] = set()
        for level, tag, path in (("Study", STUDY_UID, "studies"), ("Series", SERIES_UID, "series"),
                                 ("Instance", SOP_INSTANCE_UID, "instances")):
            uids = sorted({r.uid for r in wanted if r.level == level})
            for start in range(0, len(uids), _UIDS_PER_QUERY):
                batch = uids[start : start + _UIDS_PER_QUERY]
                # UID list matching (PS3.4 §C.2.2.2.2): one query for many UIDs.
                found = await self.qido(path, [(tag, ",".join(batch)), ("includefield", PATIENT_ID),
                                               ("limit", str(len(batch) * _PAGE))])
                taken |= {uid for ds in found if (uid := ds.string(tag)) in batch
                          and ds.string(PATIENT_ID) != patient_id}
        return taken

    async def _copies(self, resource: Resource, patient_id: str | None = None) -> list[DicomJson]:
        """Every dataset the PACS answers for the resource's UID (this patient's only, when given), with PatientID."""
        if resource.instance is not None:
            path, tag = f"studies/{resource.study}/series/{resource.series}/instances", SOP_INSTANCE_UID
        elif resource.series is not None:
            path, tag = f"studies/{resource.study}/series", SERIES_UID
        else:
            path, tag = "studies", STUDY_UID
        params = [(tag, resource.uid), ("includefield", PATIENT_ID), ("limit", str(_PAGE))]
        if patient_id is not None:
            params.append(("PatientID", self._upstream.profile.exact_value(patient_id)))
        found = await self.qido(path, params)
        return [ds for ds in found if ds.string(tag) in (None, resource.uid)]

    async def qido(self, path: str, params: Iterable[tuple[str, str]]) -> list[DicomJson]:
        """One QIDO-RS search; its datasets, or [] when nothing matches."""
        response = await self._upstream.request(
            "GET", path, operation="qido", params=params, headers={"Accept": DICOM_JSON}
        )
        # PS3.18 §10.6.3: 204 or an empty array when nothing matches; some servers answer 404 for an unknown parent.
        if response.status_code in (204, 404) or (response.status_code == 200 and not response.content):
            return []
        if response.status_code != 200:
            raise UpstreamFailed("the PACS refused a search", {"upstream_status": response.status_code})
        try:
            return DicomJson.list_from(response.json())
        except ValueError:
            raise UpstreamFailed("the PACS answered a search with something other than DICOM JSON") from None


_KINDS = {"Study": "studies", "Series": "series", "Instance": "instances"}
