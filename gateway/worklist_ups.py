"""Building the UPS-RS create dataset (PS3.18 §11.4, PS3.4 Table CC.2.5-3) from validated workitem fields.

Used by `gateway.workitems`. What differs per upstream dialect is chosen by `dialect`: `standard` (PS3.18 as
written: Type 2 attributes present, TransactionUID present and empty), `azure` (as standard, plus the attributes
Microsoft's validator requires with values, and TypeOfInstances with a ReferencedSOPSequence at top level),
`dcm4chee` (no SOP Class/Instance UID in the body, no Type 2 requirement).
"""

from __future__ import annotations

from typing import Any

from gateway.worklist_fields import (
    HUMAN_PERFORMERS,
    LOCAL_SCHEME,
    REFERENCED_REQUEST,
    STATION_CLASS_CODE,
    STATION_NAME_CODE,
    WORKITEM_CODE,
)

Dataset = dict[str, Any]

# Table CC.2.5-3 Type 2 attributes of a UPS create, present (empty when unknown) for standard and azure upstreams.
TYPE2_TOP = {
    "00081195": "UI",  # Transaction UID: present and empty at creation
    "00741210": "SQ",  # Scheduled Processing Parameters Sequence
    "00404025": "SQ",  # Scheduled Station Name Code Sequence
    "00404026": "SQ",  # Scheduled Station Class Code Sequence
    "00404027": "SQ",  # Scheduled Station Geographic Location Code Sequence
    "00404018": "SQ",  # Scheduled Workitem Code Sequence
    "00400400": "LT",  # Comments on the Scheduled Procedure Step
    "00404021": "SQ",  # Input Information Sequence
    "00100010": "PN",  # Patient's Name
    "00100021": "LO",  # Issuer of Patient ID
    "00100024": "SQ",  # Issuer of Patient ID Qualifiers Sequence
    "00101002": "SQ",  # Other Patient IDs Sequence
    "00100030": "DA",  # Patient's Birth Date
    "00100040": "CS",  # Patient's Sex
    "00380010": "LO",  # Admission ID
    "00380014": "SQ",  # Issuer of Admission ID Sequence
    "00081080": "LO",  # Admitting Diagnoses Description
    "00081084": "SQ",  # Admitting Diagnoses Code Sequence
    "0040A370": "SQ",  # Referenced Request Sequence
    "00741002": "SQ",  # Procedure Step Progress Information Sequence
    "00741216": "SQ",  # Unified Procedure Step Performed Procedure Sequence
}
TYPE2_REQUEST_ITEM = {
    "00080050": "SH",  # Accession Number
    "00080051": "SQ",  # Issuer of Accession Number Sequence
    "00400026": "SQ",  # Order Placer Identifier Sequence
    "00400027": "SQ",  # Order Filler Identifier Sequence
    "00401001": "SH",  # Requested Procedure ID
    "00321060": "LO",  # Requested Procedure Description
    "00321064": "SQ",  # Requested Procedure Code Sequence
}
TOP_LEVEL = {  # simple field -> (tag, VR) for fields that land at top level unchanged
    "PatientID": ("00100020", "LO"),
    "ReferringPhysicianName": ("00080090", "PN"),
    "AdmissionID": ("00380010", "LO"),
    "CurrentPatientLocation": ("00380300", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
    "ConfidentialityConstraintOnPatientDataDescription": ("00403001", "LO"),
    "PatientState": ("00380500", "LO"),
    "PregnancyStatus": ("001021C0", "US"),
    "MedicalAlerts": ("00102000", "LO"),
    "ServiceEpisodeID": ("00380060", "LO"),
}
REQUEST_ITEM = {  # simple field -> (tag, VR) inside the Referenced Request Sequence item
    "AccessionNumber": ("00080050", "SH"),
    "RequestedProcedureID": ("00401001", "SH"),
    "RequestedProcedureDescription": ("00321060", "LO"),
    "RequestingPhysician": ("00321032", "PN"),
    "PlacerOrderNumberImagingServiceRequest": ("00402016", "LO"),
}
PN_VRS = frozenset({"PN"})


class MissingForDialect(ValueError):
    """Fields this upstream requires with a value that the caller did not give."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(", ".join(fields))
        self.fields = fields


def element(vr: str, *values: Any) -> dict[str, Any]:
    if vr in PN_VRS:
        values = tuple({"Alphabetic": value} for value in values)
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return {"00080100": element("SH", value), "00080102": element("SH", scheme), "00080104": element("LO", meaning)}


def build_create(values: dict[str, Any], *, dialect: str, study_uid: str, priority: str = "MEDIUM",
                 input_readiness: str = "READY", worklist_label: str = "WORKLIST",
                 unknown_birth_date: str | None = None) -> Dataset:
    """The UPS dataset for a create, without the workitem UID (the dialect says where it goes)."""
    description = values["ScheduledProcedureStepDescription"]
    start = values["ScheduledProcedureStepStartDate"] + values["ScheduledProcedureStepStartTime"]
    ups: Dataset = {
        "00741200": element("CS", priority),
        "00741204": element("LO", description),  # Procedure Step Label
        "00404005": element("DT", start),
        "00404041": element("CS", input_readiness),
        "00741000": element("CS", "SCHEDULED"),
        "00100010": element("PN", values["PatientName"]),
        "0020000D": element("UI", study_uid),
        STATION_NAME_CODE: element("SQ", _code(values["ScheduledStationAETitle"], LOCAL_SCHEME,
                                              values.get("ScheduledStationName", values["ScheduledStationAETitle"]))),
        STATION_CLASS_CODE: element("SQ", _code(values["Modality"], "DCM", values["Modality"])),
        WORKITEM_CODE: element("SQ", _code(values.get("ScheduledProcedureStepID", values["Modality"]), LOCAL_SCHEME,
                                          description)),
    }
    for field, (tag, vr) in TOP_LEVEL.items():
        if field in values:
            ups[tag] = element(vr, values[field])
    request: Dataset = {"0020000D": element("UI", study_uid)}
    for field, (tag, vr) in REQUEST_ITEM.items():
        if field in values:
            request[tag] = element(vr, values[field])
    if "ScheduledPerformingPhysiciansName" in values:
        performer = values["ScheduledPerformingPhysiciansName"]
        ups[HUMAN_PERFORMERS] = element("SQ", {
            "00404009": element("SQ", _code("PERFORMER", LOCAL_SCHEME, "Scheduled performing physician")),
            "00404037": element("PN", performer),
        })
    if dialect == "dcm4chee":
        ups["00741202"] = element("LO", worklist_label)
        ups[REFERENCED_REQUEST] = element("SQ", request)
        return ups
    for tag, vr in TYPE2_REQUEST_ITEM.items():
        request.setdefault(tag, element(vr))
    ups[REFERENCED_REQUEST] = element("SQ", request)
    for tag, vr in TYPE2_TOP.items():
        ups.setdefault(tag, element(vr))
    ups["00081195"] = element("UI")  # present and empty: the lock is taken when work starts
    if dialect == "standard":
        ups["00741202"] = element("LO", worklist_label)
        return ups
    # azure: Microsoft's validator wants these with values (shared/upstreams/ups-rs.md).
    defaults = {"00100040": ("CS", "O"), "00380010": ("LO", values["AccessionNumber"]),
                "00081080": ("LO", description)}
    for tag, (vr, default) in defaults.items():
        if "Value" not in ups[tag]:
            ups[tag] = element(vr, default)
    if "Value" not in ups["00100030"]:
        if unknown_birth_date is None:  # a birth date is not made up unless the operator chose a placeholder
            raise MissingForDialect(["PatientBirthDate"])
        ups["00100030"] = element("DA", unknown_birth_date)
    ups["0040E020"] = element("CS", "DICOM")  # Type of Instances, with the Referenced SOP Sequence below
    ups["00081199"] = element("SQ", {"00081150": element("UI", "1.2.840.10008.5.1.4.1.1.7"),
                                     "00081155": element("UI", study_uid)})
    return ups
