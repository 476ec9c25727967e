"""The simple JSON fields of a workitem and where each lands in the UPS dataset (PS3.4 Annex CC, Table CC.2.5-3).

`FIELDS` is the one table of the translation: a field's VR check, whether it is required, and its destination as a
path of tags (an element at top level, or inside the single item of a sequence). The README shows the same table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import vr
from gateway.errors import BadRequest
from gateway.qido import MATCHING_CHARACTERS

# Sequences whose single item gathers several fields.
REFERENCED_REQUEST = "0040A370"  # Referenced Request Sequence
STATION_NAME_CODE = "00404025"  # Scheduled Station Name Code Sequence
STATION_CLASS_CODE = "00404026"  # Scheduled Station Class Code Sequence
WORKITEM_CODE = "00404018"  # Scheduled Workitem Code Sequence
HUMAN_PERFORMERS = "00404034"  # Scheduled Human Performers Sequence
# Private coding scheme for codes the gateway makes up (PS3.16 §8.2: "99" prefix for local schemes).
LOCAL_SCHEME = "99DCMGW"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    vr: str
    check: Callable[[Any], Any]
    required: bool
    destination: str  # human-readable, for the README table
    path: tuple[str, ...]  # tags: the element, possibly inside a sequence's item


def _pregnancy(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise vr.VrError("1 (not pregnant), 2 (possibly pregnant), 3 (definitely pregnant) or 4 (unknown)")
    return vr.us(int(value), frozenset({1, 2, 3, 4}))


def _patient_id(value: str) -> str:
    """LO, and matchable exactly later: a workitem is found again by its PatientID."""
    value = vr.lo(value)
    if MATCHING_CHARACTERS.intersection(value):
        raise vr.VrError("no wildcards (* ?) or lists (,): the workitem must be found again by this exact ID")
    return value


def _sex(value: str) -> str:
    value = vr.cs(value)
    if value not in ("M", "F", "O"):
        raise vr.VrError("M, F or O")
    return value


FIELDS: tuple[Field, ...] = (
    Field("PatientID", "LO", _patient_id, True, "Patient ID (0010,0020)", ("00100020",)),
    Field("PatientName", "PN", vr.pn, True, "Patient's Name (0010,0010)", ("00100010",)),
    Field("ScheduledStationAETitle", "AE", vr.ae, True,
          "Scheduled Station Name Code Sequence (0040,4025) > Code Value (0008,0100)",
          (STATION_NAME_CODE, "00080100")),
    Field("ScheduledProcedureStepDescription", "LO", vr.lo, True,
          "Procedure Step Label (0074,1204), and Code Meaning of the Scheduled Workitem Code", ("00741204",)),
    Field("ScheduledProcedureStepStartDate", "DA", vr.da, True,
          "Scheduled Procedure Step Start DateTime (0040,4005), date part", ("00404005",)),
    Field("ScheduledProcedureStepStartTime", "TM", vr.tm, True,
          "Scheduled Procedure Step Start DateTime (0040,4005), time part", ("00404005",)),
    Field("Modality", "CS", vr.cs, True,
          "Scheduled Station Class Code Sequence (0040,4026) > Code Value, scheme DCM (CID 29)",
          (STATION_CLASS_CODE, "00080100")),
    Field("AccessionNumber", "SH", vr.sh, True,
          "Referenced Request Sequence (0040,A370) > Accession Number (0008,0050)", (REFERENCED_REQUEST, "00080050")),
    Field("StudyInstanceUID", "UI", vr.ui, False,
          "Study Instance UID (0020,000D), and in the Referenced Request Sequence item; generated when absent",
          ("0020000D",)),
    Field("ScheduledPerformingPhysiciansName", "PN", vr.pn, False,
          "Scheduled Human Performers Sequence (0040,4034) > Human Performer's Name (0040,4037)",
          (HUMAN_PERFORMERS, "00404037")),
    Field("ScheduledProcedureStepID", "SH", vr.sh, False,
          "Scheduled Workitem Code Sequence (0040,4018) > Code Value (local scheme 99DCMGW)",
          (WORKITEM_CODE, "00080100")),
    Field("RequestedProcedureDescription", "LO", vr.lo, False,
          "Referenced Request Sequence > Requested Procedure Description (0032,1060)",
          (REFERENCED_REQUEST, "00321060")),
    Field("RequestedProcedureID", "SH", vr.sh, False,
          "Referenced Request Sequence > Requested Procedure ID (0040,1001)", (REFERENCED_REQUEST, "00401001")),
    Field("RequestingPhysician", "PN", vr.pn, False,
          "Referenced Request Sequence > Requesting Physician (0032,1032)", (REFERENCED_REQUEST, "00321032")),
    Field("ReferringPhysicianName", "PN", vr.pn, False, "Referring Physician's Name (0008,0090)", ("00080090",)),
    Field("AdmissionID", "LO", vr.lo, False, "Admission ID (0038,0010)", ("00380010",)),
    Field("CurrentPatientLocation", "LO", vr.lo, False, "Current Patient Location (0038,0300)", ("00380300",)),
    Field("PatientBirthDate", "DA", vr.da, False, "Patient's Birth Date (0010,0030)", ("00100030",)),
    Field("PatientSex", "CS", _sex, False, "Patient's Sex (0010,0040)", ("00100040",)),
    Field("ConfidentialityConstraintOnPatientDataDescription", "LO", vr.lo, False,
          "Confidentiality Constraint on Patient Data Description (0040,3001)", ("00403001",)),
    Field("PatientState", "LO", vr.lo, False, "Patient State (0038,0500)", ("00380500",)),
    Field("PregnancyStatus", "US", _pregnancy, False, "Pregnancy Status (0010,21C0)", ("001021C0",)),
    Field("MedicalAlerts", "LO", vr.lo, False, "Medical Alerts (0010,2000)", ("00102000",)),
    Field("PlacerOrderNumberImagingServiceRequest", "LO", vr.lo, False,
          "Referenced Request Sequence > Placer Order Number / Imaging Service Request (0040,2016)",
          (REFERENCED_REQUEST, "00402016")),
    Field("ServiceEpisodeID", "LO", vr.lo, False, "Service Episode ID (0038,0060)", ("00380060",)),
    Field("ScheduledStationName", "SH", vr.sh, False,
          "Scheduled Station Name Code Sequence (0040,4025) > Code Meaning (0008,0104)",
          (STATION_NAME_CODE, "00080104")),
)

BY_NAME = {field.name: field for field in FIELDS}


def parse_workitem(body: Any) -> dict[str, Any]:
    """The validated values of a workitem's simple JSON; `BadRequest` with one detail per offending field."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object of workitem fields", {"fields": []})
    problems: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for name in sorted(set(body) - set(BY_NAME)):
        problems.append({"field": str(name)[:64], "message": "unknown field"})
    for field in FIELDS:
        raw = body.get(field.name)
        if raw is None or raw == "":
            if field.required:
                problems.append({"field": field.name, "message": "required"})
            continue
        if field.vr != "US" and not isinstance(raw, str):
            problems.append({"field": field.name, "message": "must be a string"})
            continue
        try:
            values[field.name] = field.check(raw)
        except vr.VrError as exc:
            problems.append({"field": field.name, "message": f"{field.vr}: {exc}"})
            continue
        if field.required and values[field.name] == "":
            problems.append({"field": field.name, "message": "required"})
    if problems:
        raise BadRequest("the workitem is not valid", {"fields": problems})
    return values
