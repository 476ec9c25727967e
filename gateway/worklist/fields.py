"""The simple JSON fields of a workitem: how each is checked, where it lands in the UPS dataset the PACS keeps
(PS3.4 Annex CC, Table CC.2.5-3), and where it is shown in the Modality Worklist layout clients read (PS3.4 Table
K.6-1, the layout of the contract page's `GET /workitems` example).

`FIELDS` is the one table of both translations: a field's VR check, whether it is required, its UPS destination as a
path of tags (an element at top level, or inside the single item of a sequence) and its MWL place (likewise). The
docs/api/worklist.md shows the same table; `worklist.ups` writes and reads the UPS side, `worklist.mwl` the MWL side.

Dates and times are taken in the spellings clients commonly send and stored as DICOM DA / TM:
- DA: `YYYYMMDD` or `YYYY-MM-DD`, a real calendar date.
- TM: `HHMM`, `HHMMSS`, `HHMMSS.F` (1-6 digits), or the same with colons (`HH:MM`, `HH:MM:SS`, `HH:MM:SS.F`);
  stored as `HHMMSS[.F]`. Seconds run 00-59: PS3.5 lets TM say 60 (a leap second), but the start time is sent to the
  PACS inside a DT, which dcm4che (java.time) and Microsoft's service (.NET DateTime) cannot hold with second 60, so
  `12:00:60` is refused here rather than by the PACS. The checks are `gateway.dicom.vr.loose_da` and `vr.loose_tm`.
Anything else is a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_description

from gateway.dicom import vr
from gateway.dicom.identifiers import PATIENT_ID_MAX, IdentifierError, exact_identifier
from gateway.dicom.tags import (
    HUMAN_PERFORMERS,
    REFERENCED_REQUEST,
    SCHEDULED_STEP,
    STATION_CLASS_CODE,
    STATION_NAME_CODE,
    WORKITEM_CODE,
)
from gateway.errors import BadRequest

# UPS sequences whose single item gathers several fields.
# MWL: the Scheduled Procedure Step Sequence, whose single item holds the step's fields (PS3.4 Table K.6-1).
# Private coding scheme for codes the gateway makes up (PS3.16 §8.2: "99" prefix for local schemes).
LOCAL_SCHEME = "99DCMGW"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    vr: str
    check: Callable[[Any], Any]
    required: bool
    destination: str  # human-readable UPS destination, for the docs table
    path: tuple[str, ...]  # UPS: the element, possibly inside a sequence's item
    mwl: tuple[str, ...]  # MWL: the element, possibly inside the Scheduled Procedure Step Sequence's item
    always_shown: bool = True  # in the MWL layout even when unknown (every tag of the contract page's example)

    @property
    def mwl_place(self) -> str:
        """The MWL place in words, for the docs table: `Scheduled Procedure Step Sequence (0040,0100) > ...`."""
        return " > ".join(f"{dictionary_description(int(tag, 16))} ({tag[:4]},{tag[4:]})" for tag in self.mwl)


def _pregnancy(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise vr.VrError("1 (not pregnant), 2 (possibly pregnant), 3 (definitely pregnant) or 4 (unknown)")
    return vr.us(int(value), frozenset({1, 2, 3, 4}))


def _patient_id(value: str) -> str:
    """LO, by the rule of every PatientID the gateway matches (`identifiers.exact_identifier`, the searches'
    `edge.params.validate_patient_id`): a workitem is found again, and its study's patient told, by this exact ID. One
    trailing pad space is dropped; other padding, wildcards, lists, controls and spaces other than U+0020 are 400."""
    try:
        return exact_identifier(value, PATIENT_ID_MAX)
    except IdentifierError as exc:
        raise vr.VrError(str(exc)) from None


def _sex(value: str) -> str:
    value = vr.cs(value)
    if value not in ("M", "F", "O"):
        raise vr.VrError("M, F or O")
    return value


def _step(tag: str) -> tuple[str, str]:
    return SCHEDULED_STEP, tag


FIELDS: tuple[Field, ...] = (
    Field("PatientID", "LO", _patient_id, True, "Patient ID (0010,0020)", ("00100020",), ("00100020",)),
    Field("PatientName", "PN", vr.pn, True, "Patient's Name (0010,0010)", ("00100010",), ("00100010",)),
    Field("ScheduledStationAETitle", "AE", vr.ae, True,
          "Scheduled Station Name Code Sequence (0040,4025) > Code Value (0008,0100)",
          (STATION_NAME_CODE, "00080100"), _step("00400001")),
    Field("ScheduledProcedureStepDescription", "LO", vr.lo, True,
          "Procedure Step Label (0074,1204) (and the Scheduled Workitem Code's meaning, with a step ID)", ("00741204",),
          _step("00400007")),
    Field("ScheduledProcedureStepStartDate", "DA", vr.loose_da, True,
          "Scheduled Procedure Step Start DateTime (0040,4005), date part", ("00404005",), _step("00400002")),
    Field("ScheduledProcedureStepStartTime", "TM", vr.loose_tm, True,
          "Scheduled Procedure Step Start DateTime (0040,4005), time part", ("00404005",), _step("00400003")),
    Field("Modality", "CS", vr.cs, True,
          "Scheduled Station Class Code Sequence (0040,4026) > Code Value, scheme DCM (CID 29)",
          (STATION_CLASS_CODE, "00080100"), _step("00080060")),
    Field("AccessionNumber", "SH", vr.sh, True,
          "Referenced Request Sequence (0040,A370) > Accession Number (0008,0050)", (REFERENCED_REQUEST, "00080050"),
          ("00080050",)),
    Field("StudyInstanceUID", "UI", vr.ui, False,
          "Study Instance UID (0020,000D), and in the Referenced Request Sequence item; generated when absent",
          ("0020000D",), ("0020000D",)),
    Field("ScheduledPerformingPhysiciansName", "PN", vr.pn, False,
          "Scheduled Human Performers Sequence (0040,4034) > Human Performer's Name (0040,4037)",
          (HUMAN_PERFORMERS, "00404037"), _step("00400006")),
    Field("ScheduledProcedureStepID", "SH", vr.sh, False,
          "Scheduled Workitem Code Sequence (0040,4018) > Code Value (local scheme 99DCMGW)",
          (WORKITEM_CODE, "00080100"), _step("00400009")),
    Field("RequestedProcedureDescription", "LO", vr.lo, False,
          "Referenced Request Sequence > Requested Procedure Description (0032,1060)",
          (REFERENCED_REQUEST, "00321060"), ("00321060",)),
    Field("RequestedProcedureID", "SH", vr.sh, False,
          "Referenced Request Sequence > Requested Procedure ID (0040,1001)", (REFERENCED_REQUEST, "00401001"),
          ("00401001",)),
    Field("RequestingPhysician", "PN", vr.pn, False,
          "Referenced Request Sequence > Requesting Physician (0032,1032)", (REFERENCED_REQUEST, "00321032"),
          ("00321032",)),
    Field("ReferringPhysicianName", "PN", vr.pn, False, "Referring Physician's Name (0008,0090)", ("00080090",),
          ("00080090",)),
    Field("AdmissionID", "LO", vr.lo, False, "Admission ID (0038,0010)", ("00380010",), ("00380010",)),
    Field("CurrentPatientLocation", "LO", vr.lo, False, "Current Patient Location (0038,0300)", ("00380300",),
          ("00380300",)),
    Field("PatientBirthDate", "DA", vr.loose_da, False, "Patient's Birth Date (0010,0030)", ("00100030",),
          ("00100030",)),
    Field("PatientSex", "CS", _sex, False, "Patient's Sex (0010,0040)", ("00100040",), ("00100040",)),
    Field("ConfidentialityConstraintOnPatientDataDescription", "LO", vr.lo, False,
          "Confidentiality Constraint on Patient Data Description (0040,3001)", ("00403001",), ("00403001",)),
    Field("PatientState", "LO", vr.lo, False, "Patient State (0038,0500)", ("00380500",), ("00380500",)),
    Field("PregnancyStatus", "US", _pregnancy, False, "Pregnancy Status (0010,21C0)", ("001021C0",),
          ("001021C0",)),
    Field("MedicalAlerts", "LO", vr.lo, False, "Medical Alerts (0010,2000)", ("00102000",), ("00102000",)),
    Field("PlacerOrderNumberImagingServiceRequest", "LO", vr.lo, False,
          "Referenced Request Sequence > Placer Order Number / Imaging Service Request (0040,2016)",
          (REFERENCED_REQUEST, "00402016"), ("00402016",)),
    Field("ServiceEpisodeID", "LO", vr.lo, False, "Service Episode ID (0038,0060)", ("00380060",), ("00380060",),
          always_shown=False),
    Field("ScheduledStationName", "SH", vr.sh, False,
          "Scheduled Station Name Code Sequence (0040,4025) > Code Meaning (0008,0104)",
          (STATION_NAME_CODE, "00080104"), _step("00400010")),
)

BY_NAME = {field.name: field for field in FIELDS}


def parse_workitem(body: Any) -> dict[str, Any]:
    """The validated values of a workitem's simple JSON; `BadRequest` with one detail per offending field.

    A field sent empty (or only spaces) is a field not sent: required ones are named, optional ones left unknown.
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object of workitem fields", {"fields": []})
    problems: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for name in sorted(set(body) - set(BY_NAME)):
        problems.append({"field": str(name)[:64], "message": "unknown field"})
    for field in FIELDS:
        raw = body.get(field.name)
        if raw is None or (isinstance(raw, str) and not raw.strip(" ")):
            if field.required:
                problems.append({"field": field.name, "message": "required"})
            continue
        if field.vr != "US" and not isinstance(raw, str):
            problems.append({"field": field.name, "message": "must be a string"})
            continue
        try:
            value = field.check(raw)
        except vr.VrError as exc:
            problems.append({"field": field.name, "message": f"{field.vr}: {exc}"})
            continue
        if value == "":
            if field.required:
                problems.append({"field": field.name, "message": "required"})
            continue
        values[field.name] = value
    if problems:
        raise BadRequest("the workitem is not valid", {"fields": problems})
    return values
