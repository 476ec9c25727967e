"""The STOW-RS side of `POST /exams` (PS3.18 §10.5): the one request that stores an upload's fresh instances, and
the answer the client gets, its RetrieveURLs pointing at the gateway and its duplicates listed as failed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON
from gateway.dicom.part10 import ZERO_PREAMBLE
from gateway.dicom.tags import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
)
from gateway.edge.multipart import PART_SEPARATOR, new_boundary, related_closing, related_part_header
from gateway.errors import Conflict, UnprocessableContent
from gateway.exams.files import CHUNK, Upload
from gateway.exams.links import ExamLinks
from gateway.upstream.client import UpstreamClient

# Azure DICOM service's failure reason for "an instance with these UIDs is already stored"; clients of the product
# this API comes from look for it.
ALREADY_STORED = 45070
# Failure reasons that mean "already there": Azure's 45070 and 0x0111, "Duplicate SOP Instance" (PS3.7 §C.4.2).
_DUPLICATE_REASONS = frozenset({ALREADY_STORED, 0x0111})


async def store(upstream: UpstreamClient, uploads: list[Upload]) -> DicomJson:
    """Send `uploads` to the PACS in one STOW-RS request, preambles zeroed; the answer (`stow_answer`)."""
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
                if len(pending) + len(chunk) > CHUNK:
                    if pending:
                        yield bytes(pending)
                        pending.clear()
                    if len(chunk) >= CHUNK // 2:
                        yield chunk  # a large piece goes as it is, not copied
                        continue
                pending += chunk
            pending += PART_SEPARATOR
        pending += closing
        yield bytes(pending)

    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": DICOM_JSON}
    if length <= CHUNK:  # small: one buffer in one exchange through the lean pool (`UpstreamClient.request`)
        answer = await upstream.request("POST", "studies", operation="stow", headers=headers,
                                        content=b"".join([chunk async for chunk in body()]))
        return stow_answer(answer.status_code, answer.content)
    response = await upstream.open_stream("POST", "studies", operation="stow", content=body(),
                                          headers={**headers, "Content-Length": str(length)})
    try:
        payload = await response.read()
    finally:
        await response.aclose()
    return stow_answer(response.status_code, payload)


def point_at_gateway(links: ExamLinks, dataset: DicomJson, uploads: list[Upload]) -> None:
    """RetrieveURLs name the gateway's `/exams` paths, never the internal PACS (PS3.18 §10.5.3)."""
    by_uid = {item.header.sop_instance_uid: item.header for item in uploads}
    for item in dataset.items(REFERENCED_SOP_SEQUENCE):
        header = by_uid.get(item.string(REFERENCED_SOP_INSTANCE_UID) or "")
        if header is None:
            item.remove(RETRIEVE_URL)
        else:
            item.set_string(RETRIEVE_URL, "UR", links.instance(
                header.study_uid, header.series_uid, header.sop_instance_uid, header.patient_id))
    for item in dataset.items(FAILED_SOP_SEQUENCE):
        item.remove(RETRIEVE_URL)
    studies = {(h.study_uid, h.patient_id) for h in by_uid.values()}
    if len(studies) == 1:
        study_uid, patient_id = studies.pop()
        dataset.set_string(RETRIEVE_URL, "UR", links.study(study_uid, patient_id))
    else:
        dataset.remove(RETRIEVE_URL)  # an upload across studies has no one study to point at


def add_duplicates(dataset: DicomJson, duplicates: list[Upload]) -> None:
    if duplicates:
        failed = [*dataset.items(FAILED_SOP_SEQUENCE), *stow_failures(duplicates).items(FAILED_SOP_SEQUENCE)]
        dataset.set_sequence(FAILED_SOP_SEQUENCE, failed)


def stow_answer(status: int, payload: bytes) -> DicomJson:
    """The STOW-RS response dataset; an upstream refusal of instances the gateway found valid becomes 409 or 422."""
    try:
        decoded = json.loads(payload)  # Orthanc sends it with no Content-Type (measured, docs/tests.md)
        if isinstance(decoded, list):
            dataset = DicomJson.list_from(decoded)[0]
        else:
            dataset = DicomJson(decoded if isinstance(decoded, dict) else {})
    except (ValueError, IndexError, TypeError):
        dataset = DicomJson({})
    if status in (200, 202):
        return dataset
    reasons = [item.integer(FAILURE_REASON) for item in dataset.items(FAILED_SOP_SEQUENCE)]
    details = {"upstream_status": status, "failure_reasons": reasons}
    if status == 409 and reasons and all(r in _DUPLICATE_REASONS for r in reasons):
        raise Conflict("every instance is already stored", details)
    raise UnprocessableContent("the PACS refused to store the instances", details)


def failure_detail(item: Upload) -> dict[str, object]:
    return {"file": item.filename, "SOPInstanceUID": item.header.sop_instance_uid, "FailureReason": ALREADY_STORED}


def stow_failures(duplicates: list[Upload]) -> DicomJson:
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
