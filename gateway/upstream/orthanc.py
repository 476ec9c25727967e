"""Orthanc's own resource ids, computed from DICOM identifiers, for O(1) existence checks on its native REST API.

Orthanc names each patient, study, series and instance by the SHA-1 of its identifiers joined with `|`
(PatientID | StudyInstanceUID | SeriesInstanceUID | SOPInstanceUID, truncated per level), written as five groups of
eight hex digits. `GET /studies/{id}` is then a key lookup, where a QIDO-RS search in Orthanc 1.10 costs time in
proportion to the archive and, for any study-level answer, reads a stored file (~40 ms for an 80 MiB instance).
The PatientID takes part in the hash as stored, so a hit is an exact-patient match by construction.
"""

from __future__ import annotations

import hashlib


def orthanc_id(*identifiers: str) -> str:
    digest = hashlib.sha1("|".join(identifiers).encode("utf-8"), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))
