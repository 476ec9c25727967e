"""The UPS-RS side of a workitem (PS3.18 §11.4, PS3.4 Table CC.2.5-3): the create dataset built from validated
workitem fields, and those fields read back from a UPS dataset as the PACS returns it.

Used by `gateway.worklist.routes` and `gateway.worklist.mwl`. Where each field goes is `worklist.fields.FIELDS`. What
differs per upstream dialect is chosen by `dialect`: `standard` (PS3.18 as written: Type 2 attributes present, empty
when unknown; TransactionUID present and empty), `azure` (the same: Microsoft's validator checks that Type 2
attributes are present, PatientBirthDate, PatientSex, AdmissionID and AdmittingDiagnosesDescription included, and
accepts them empty, per its DICOM conformance statement (requirement type 2); an open question, see
tests/ups_simulator.py), `dcm4chee` (no SOP Class/Instance UID in the body, no Type 2 requirement).

Nothing is made up to satisfy a PACS: an unknown value is an empty element, never a placeholder. The codes the
gateway must build (Table CC.2.5-2a needs a Code Meaning in every code item) say what they are: the station's AE
title under the local scheme 99DCMGW (its Code Meaning the station name, or the AE title when no name was given),
the modality under DCM, and the step ID under 99DCMGW only when one was given.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.dicom.identifiers import IdentifierError, exact_identifier
from gateway.dicom.tags import (
    CODE_MEANING,
    CODE_VALUE,
    CODING_SCHEME,
    HUMAN_PERFORMERS,
    PATIENT_ID,
    PROCEDURE_STEP_LABEL,
    REFERENCED_REQUEST,
    START_DATETIME,
    STATION_CLASS_CODE,
    STATION_NAME_CODE,
    STUDY_UID,
    WORKITEM_CODE,
)
from gateway.worklist.fields import FIELDS, LOCAL_SCHEME

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
# Fields copied unchanged into one top-level element, and those in the Referenced Request Sequence item.
_PLAIN = tuple(field for field in FIELDS if len(field.path) == 1
               and field.path[0] not in (START_DATETIME, STUDY_UID, PROCEDURE_STEP_LABEL))
_IN_REQUEST = tuple(field for field in FIELDS if field.path[0] == REFERENCED_REQUEST)
_DT = re.compile(r"(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?(?:[+-]\d{4})?", re.ASCII)


def element(vr: str, *values: Any) -> dict[str, Any]:
    if vr == "PN":
        values = tuple({"Alphabetic": value} for value in values)
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return {CODE_VALUE: element("SH", value), CODING_SCHEME: element("SH", scheme),
            CODE_MEANING: element("LO", meaning)}


def build_create(values: dict[str, Any], *, dialect: str, study_uid: str, priority: str = "MEDIUM",
                 input_readiness: str = "READY", worklist_label: str = "WORKLIST") -> Dataset:
    """The UPS dataset for a create, without the workitem UID (the dialect says where it goes)."""
    description = values["ScheduledProcedureStepDescription"]
    aet = values["ScheduledStationAETitle"]
    ups: Dataset = {
        "00741200": element("CS", priority),
        PROCEDURE_STEP_LABEL: element("LO", description),
        START_DATETIME: element("DT", values["ScheduledProcedureStepStartDate"]
                                + values["ScheduledProcedureStepStartTime"]),
        "00404041": element("CS", input_readiness),
        "00741000": element("CS", "SCHEDULED"),
        STUDY_UID: element("UI", study_uid),
        STATION_NAME_CODE: element("SQ", _code(aet, LOCAL_SCHEME, values.get("ScheduledStationName", aet))),
        STATION_CLASS_CODE: element("SQ", _code(values["Modality"], "DCM", values["Modality"])),
    }
    if "ScheduledProcedureStepID" in values:
        ups[WORKITEM_CODE] = element("SQ", _code(values["ScheduledProcedureStepID"], LOCAL_SCHEME, description))
    for field in _PLAIN:
        if field.name in values:
            ups[field.path[0]] = element(field.vr, values[field.name])
    request: Dataset = {STUDY_UID: element("UI", study_uid)}
    for field in _IN_REQUEST:
        if field.name in values:
            request[field.path[1]] = element(field.vr, values[field.name])
    if "ScheduledPerformingPhysiciansName" in values:
        ups[HUMAN_PERFORMERS] = element("SQ", {
            "00404009": element("SQ", _code("PERFORMER", LOCAL_SCHEME, "Scheduled performing physician")),
            "00404037": element("PN", values["ScheduledPerformingPhysiciansName"]),
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
    ups["00741202"] = element("LO", worklist_label)  # Type 2/1; Microsoft's service replaces it with "worklist"
    return ups


# -- reading back ---------------------------------------------------------------------------------------------------


def _item(dataset: Dataset, tag: str) -> Dataset:
    """The first item of a sequence, or an empty dataset (absent, empty or malformed)."""
    items = values(dataset, tag)
    return items[0] if items and isinstance(items[0], dict) else {}


def values(dataset: Dataset, tag: str) -> list[Any]:
    """An element's Value array ([] when absent, empty or malformed); tags are matched case-insensitively."""
    element_ = dataset.get(tag)
    if element_ is None:
        element_ = next((value for key, value in dataset.items() if key.upper() == tag), None)
    found = element_.get("Value") if isinstance(element_, dict) else None
    return [value for value in found if value is not None] if isinstance(found, list) else []


def text(dataset: Dataset, tag: str) -> str:
    """An element's first value as text ('' when there is none): a PN's Alphabetic group, numbers as digits."""
    for value in values(dataset, tag):
        if isinstance(value, dict):
            value = value.get("Alphabetic", "")
        if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return ""


def read_workitem(ups: Dataset) -> dict[str, list[Any]]:
    """Each field's values (a dicom+json Value array, [] when unknown) as stored in a UPS dataset: the inverse of
    `build_create`, also for workitems other systems created (the first item of each sequence is read)."""
    read: dict[str, list[Any]] = {field.name: [] for field in FIELDS}
    for field in FIELDS:
        holder = _item(ups, field.path[0]) if len(field.path) == 2 else ups
        if field.path[0] in (STATION_NAME_CODE, STATION_CLASS_CODE, WORKITEM_CODE, START_DATETIME):
            continue  # below
        read[field.name] = values(holder, field.path[-1])
    read["StudyInstanceUID"] = (values(ups, STUDY_UID)
                                or values(_item(ups, REFERENCED_REQUEST), STUDY_UID))
    start = _DT.fullmatch(text(ups, START_DATETIME))
    if start is not None:
        read["ScheduledProcedureStepStartDate"] = [start.group(1)]
        read["ScheduledProcedureStepStartTime"] = [start.group(2)] if start.group(2) else []
    station = _item(ups, STATION_NAME_CODE)
    aet, station_name = text(station, CODE_VALUE), text(station, CODE_MEANING)
    read["ScheduledStationAETitle"] = [aet] if aet else []
    # With no station name given, the Code Meaning holds the AE title (it must hold something): not a name.
    read["ScheduledStationName"] = [station_name] if station_name and station_name != aet else []
    modality = text(_item(ups, STATION_CLASS_CODE), CODE_VALUE)
    read["Modality"] = [modality] if modality else []
    step = _item(ups, WORKITEM_CODE)
    step_id = text(step, CODE_VALUE)  # a step ID is the gateway's own code; other systems' codes are not IDs
    read["ScheduledProcedureStepID"] = [step_id] if step_id and text(step, CODING_SCHEME) == LOCAL_SCHEME else []
    return read


def first_value(dataset: Dataset, tag: str) -> str:
    """The first value of a UI or CS element (a UID, a state), without the padding PS3.5 §6.2 allows: spaces, and a
    UI's trailing NUL. Not `str.strip()`: NBSP, U+3000 and other white space are characters of a value. PatientIDs
    are read by `patient_of`."""
    found = values(dataset, tag)
    return str(found[0]).rstrip("\0 ").lstrip(" ") if found and isinstance(found[0], str) else ""


def patient_of(dataset: Dataset) -> str | None:
    """The workitem's PatientID by the exact-identifier rule (see gateway.worklist.routes); None when it is nobody's."""
    found = values(dataset, PATIENT_ID)
    if not found or not isinstance(found[0], str):
        return None
    try:
        return exact_identifier(found[0])
    except IdentifierError:
        return None


def of_study(dataset: Dataset, study_uid: str) -> bool:
    """Whether a workitem is for this study: at top level or in a Referenced Request Sequence item, where the
    dialects look when they match StudyInstanceUID (dcm4chee and PS3.18 servers both; Microsoft's the top level)."""
    requests = [item for item in values(dataset, REFERENCED_REQUEST) if isinstance(item, dict)]
    return any(first_value(holder, STUDY_UID) == study_uid for holder in (dataset, *requests))
