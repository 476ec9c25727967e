"""A strict UPS-RS (PS3.18 §11, Worklist Service) simulator for the gateway's tests: an ASGI app, one profile per
real server, rejecting what that server rejects with that server's status codes and error style.

No UPS-RS server can run on the project's machines (see /work/shared/upstreams/ups-rs.md), so the gateway's UPS-RS
client is tested against this. Profiles:

``azure``     Microsoft's DICOM service (microsoft/dicom-server): base ``/v2/workitems``. Create takes the workitem
              UID as the first, bare query key (``POST /v2/workitems?{uid}``) or as SOPInstanceUID in the body (both:
              they must match). Every body is a JSON array. Before validating, the server sets SOPClassUID, the UID,
              ScheduledProcedureStepModificationDateTime, WorklistLabel="worklist" and ProcedureStepState=SCHEDULED.
              Validation is Table CC.2.5-3's requirement codes (AddWorkitemDatasetValidator): Type 1 present with a
              value, Type 2 present and possibly empty (PatientBirthDate, PatientSex, AdmissionID and
              AdmittingDiagnosesDescription included, as shared/upstreams/ups-rs.md says), 1C/2C optional, the
              TransactionUID present and empty, and a sequence's items checked only when it has some. Enumerated
              values (priority, input readiness) are not checked, and nothing outside the table is required (no
              top-level TypeOfInstances or ReferencedSOPSequence: its sample bodies carry them, its validator does
              not ask for them). Errors: a JSON string body.
              Open question (issue 11, point 5): Microsoft's source at eeefbe4d7 lists PatientBirthDate, PatientSex,
              AdmissionID, AdmittingDiagnosesDescription, IssuerOfAdmissionIDSequence and
              AdmittingDiagnosesCodeSequence a second time, as Type 3 of the Patient Demographic and Visit modules
              (WorkitemDatasetValidatorExtension.cs), and its validator asks a present Type 3 attribute for a value;
              RequirementDetail has no equality, so both entries are checked. Until that is settled against a running
              service, this profile follows ups-rs.md (present, may be empty).
``dcm4chee``  dcm4chee-arc-light: base ``/dcm4chee-arc/aets/DCM4CHEE/rs/workitems``. Create takes ``?workitem={uid}``
              (absent: the server makes one up; other query keys are ignored); body one object or the same in a
              one-element array; a non-empty SOPInstanceUID or SOPClassUID in the body is rejected (create-iod.xml
              gives both Type 0). Errors: no body, ``Warning: 299 {base URL}: message``.
``standard``  PS3.18 §11 as written: base ``/dicom-web/workitems``. Create takes ``?workitem={uid}`` or SOPInstanceUID
              in the body (both: they must match; neither: 400). Errors as dcm4chee (PS3.18 §8.6.3 Warning header).

Every stored workitem keeps its TransactionUID (0008,1195) in ``UpsSimulator.workitems``; no answer ever contains it.
Update Workitem (``POST {base}/{uid}``) is not simulated (501).

The image archive behind the same root (the gateway's one ``PACS_SERVICE_URL`` serves QIDO-RS and UPS-RS) is
simulated only as far as the worklist asks it: a study-level QIDO-RS search (``GET {root}/studies``, PS3.18 §10.6)
by StudyInstanceUID (a UID list matches any of them) and PatientID, answering each study of ``UpsSimulator.studies``
(StudyInstanceUID -> PatientID, filled by a test) with those two attributes; 204 when nothing matches.
"""

from __future__ import annotations

import calendar
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from pydicom.datadict import dictionary_VR, tag_for_keyword
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Dataset = dict[str, Any]

PROFILES = ("azure", "dcm4chee", "standard")
DCM4CHEE_AET = "DCM4CHEE"
BASE_PATHS = {
    "azure": "/v2/workitems",
    "dcm4chee": f"/dcm4chee-arc/aets/{DCM4CHEE_AET}/rs/workitems",
    "standard": "/dicom-web/workitems",
}
DICOM_JSON = "application/dicom+json"
UPS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.34.6.1"  # Unified Procedure Step - Push SOP Class

SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED = "SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED"
PRIORITIES = ("HIGH", "MEDIUM", "LOW")
INPUT_READINESS_STATES = ("INCOMPLETE", "UNAVAILABLE", "READY")

# Tags (dicom+json keys, upper case).
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
ACCESSION_NUMBER = "00080050"
ISSUER_OF_ACCESSION_NUMBER_SEQUENCE = "00080051"
CODE_VALUE = "00080100"
CODE_MEANING = "00080104"
ADMITTING_DIAGNOSES_DESCRIPTION = "00081080"
ADMITTING_DIAGNOSES_CODE_SEQUENCE = "00081084"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
TRANSACTION_UID = "00081195"
REFERENCED_SOP_SEQUENCE = "00081199"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE = "00100024"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
OTHER_PATIENT_IDS_SEQUENCE = "00101002"
STUDY_INSTANCE_UID = "0020000D"
REQUESTED_PROCEDURE_DESCRIPTION = "00321060"
REQUESTED_PROCEDURE_CODE_SEQUENCE = "00321064"
ADMISSION_ID = "00380010"
ISSUER_OF_ADMISSION_ID_SEQUENCE = "00380014"
ORDER_PLACER_IDENTIFIER_SEQUENCE = "00400026"
ORDER_FILLER_IDENTIFIER_SEQUENCE = "00400027"
COMMENTS_ON_THE_SCHEDULED_PROCEDURE_STEP = "00400400"
REQUESTED_PROCEDURE_ID = "00401001"
SCHEDULED_PROCEDURE_STEP_START_DATETIME = "00404005"
SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATETIME = "00404010"
SCHEDULED_WORKITEM_CODE_SEQUENCE = "00404018"
INPUT_INFORMATION_SEQUENCE = "00404021"
SCHEDULED_STATION_NAME_CODE_SEQUENCE = "00404025"
SCHEDULED_STATION_CLASS_CODE_SEQUENCE = "00404026"
SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE = "00404027"
INPUT_READINESS_STATE = "00404041"
PERFORMED_PROCEDURE_STEP_START_DATETIME = "00404050"
PERFORMED_PROCEDURE_STEP_END_DATETIME = "00404051"
REFERENCED_REQUEST_SEQUENCE = "0040A370"
TYPE_OF_INSTANCES = "0040E020"
PROCEDURE_STEP_STATE = "00741000"
PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE = "00741002"
SCHEDULED_PROCEDURE_STEP_PRIORITY = "00741200"
WORKLIST_LABEL = "00741202"
PROCEDURE_STEP_LABEL = "00741204"
SCHEDULED_PROCESSING_PARAMETERS_SEQUENCE = "00741210"
UPS_PERFORMED_PROCEDURE_SEQUENCE = "00741216"

# Table CC.2.5-3, N-CREATE SCU requirement 2 (present, may be empty). 1C/2C are optional (as Microsoft treats them).
TYPE2_CREATE = (
    TRANSACTION_UID,
    SCHEDULED_PROCESSING_PARAMETERS_SEQUENCE,
    SCHEDULED_STATION_NAME_CODE_SEQUENCE,
    SCHEDULED_STATION_CLASS_CODE_SEQUENCE,
    SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE,
    SCHEDULED_WORKITEM_CODE_SEQUENCE,
    COMMENTS_ON_THE_SCHEDULED_PROCEDURE_STEP,
    INPUT_INFORMATION_SEQUENCE,
    PATIENT_NAME,
    ISSUER_OF_PATIENT_ID,
    ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
    OTHER_PATIENT_IDS_SEQUENCE,
    PATIENT_BIRTH_DATE,
    PATIENT_SEX,
    ADMISSION_ID,
    ISSUER_OF_ADMISSION_ID_SEQUENCE,
    ADMITTING_DIAGNOSES_DESCRIPTION,
    ADMITTING_DIAGNOSES_CODE_SEQUENCE,
    REFERENCED_REQUEST_SEQUENCE,
    PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE,
    UPS_PERFORMED_PROCEDURE_SEQUENCE,
)
# Inside each ReferencedRequestSequence item: StudyInstanceUID is Type 1, these are Type 2.
TYPE2_REFERENCED_REQUEST_ITEM = (
    ACCESSION_NUMBER,
    ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    ORDER_PLACER_IDENTIFIER_SEQUENCE,
    ORDER_FILLER_IDENTIFIER_SEQUENCE,
    REQUESTED_PROCEDURE_ID,
    REQUESTED_PROCEDURE_DESCRIPTION,
    REQUESTED_PROCEDURE_CODE_SEQUENCE,
)
# Code sequences built with the UPS Code Sequence Macro (Table CC.2.5-2a): CodeMeaning is Type 1 in each item.
CODE_SEQUENCES = (
    SCHEDULED_STATION_NAME_CODE_SEQUENCE,
    SCHEDULED_STATION_CLASS_CODE_SEQUENCE,
    SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE,
    SCHEDULED_WORKITEM_CODE_SEQUENCE,
    ADMITTING_DIAGNOSES_CODE_SEQUENCE,
)

# Azure's searchable attributes (conformance statement), as tag paths.
AZURE_SEARCHABLE: frozenset[tuple[str, ...]] = frozenset({
    (PATIENT_NAME,),
    (PATIENT_ID,),
    (REFERENCED_REQUEST_SEQUENCE, ACCESSION_NUMBER),
    (REFERENCED_REQUEST_SEQUENCE, REQUESTED_PROCEDURE_ID),
    (SCHEDULED_PROCEDURE_STEP_START_DATETIME,),
    (SCHEDULED_STATION_NAME_CODE_SEQUENCE, CODE_VALUE),
    (SCHEDULED_STATION_CLASS_CODE_SEQUENCE, CODE_VALUE),
    (SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE, CODE_VALUE),
    (PROCEDURE_STEP_STATE,),
    (STUDY_INSTANCE_UID,),
})
AZURE_SEARCH_LIMIT_MAX = 200
AZURE_SEARCH_LIMIT_DEFAULT = 100
SEARCH_PARAMETERS = {
    "azure": frozenset({"limit", "offset", "includefield", "fuzzymatching"}),
    "dcm4chee": frozenset({"limit", "offset", "includefield", "fuzzymatching", "orderby", "accept", "charset"}),
    "standard": frozenset({"limit", "offset", "includefield", "fuzzymatching"}),
}

VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN",
    "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_NUMBER_VRS = frozenset({"FD", "FL", "SL", "SS", "UL", "US"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# VRs that may carry a BulkDataURI instead of a Value (PS3.18 F.2.2), besides the binary ones.
_BULKDATA_VRS = frozenset({"DS", "FD", "FL", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "UR", "US", "UT", "UV"})
_ELEMENT_KEYS = frozenset({"vr", "Value", "InlineBinary", "BulkDataURI"})
_PN_GROUPS = frozenset({"Alphabetic", "Ideographic", "Phonetic"})

_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_DA_RE = re.compile(r"\d{8}")
_TM_RE = re.compile(r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?")
_DT_RE = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?")
_NUMBER_RE = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


class UpsReject(Exception):
    """A request the simulated server refuses: rendered in the profile's error style."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _reject(status: int, message: str) -> NoReturn:
    raise UpsReject(status, message)


def tag_name(tag: str) -> str:
    """'00741000' -> '(0074,1000)'."""
    return f"({tag[:4]},{tag[4:]})"


def new_uid() -> str:
    """A fresh UUID-derived UID (2.25 root)."""
    return f"2.25.{uuid.uuid4().int}"


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID_RE.fullmatch(value) is not None


# --- DICOM date/time values ---------------------------------------------------------------------------------------


def dt_bounds(value: str) -> tuple[datetime, datetime] | None:
    """The earliest and latest instants a DA or DT value stands for (its precision), or None if it is not valid.

    The UTC offset suffix is accepted and ignored, as in the servers' naive comparisons.
    """
    match = _DT_RE.fullmatch(value)
    if match is None:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction_s, _offset = match.groups()
    if fraction_s is not None and second_s is None:
        return None
    try:
        year = int(year_s)
        month_lo, month_hi = (int(month_s), int(month_s)) if month_s else (1, 12)
        first = datetime(year, month_lo, 1)
        last_day = calendar.monthrange(year, month_hi)[1]
        day_lo, day_hi = (int(day_s), int(day_s)) if day_s else (1, last_day)
        hour_lo, hour_hi = (int(hour_s), int(hour_s)) if hour_s else (0, 23)
        minute_lo, minute_hi = (int(minute_s), int(minute_s)) if minute_s else (0, 59)
        second_lo, second_hi = (min(int(second_s), 59), min(int(second_s), 59)) if second_s else (0, 59)
        if fraction_s:
            micro_lo, micro_hi = int(fraction_s.ljust(6, "0")), int(fraction_s.ljust(6, "9"))
        else:
            micro_lo, micro_hi = 0, 999999
        if second_s and int(second_s) > 60:
            return None
        low = first.replace(month=month_lo, day=day_lo, hour=hour_lo, minute=minute_lo, second=second_lo,
                            microsecond=micro_lo)
        high = datetime(year, month_hi, day_hi, hour_hi, minute_hi, second_hi, micro_hi)
    except ValueError:
        return None
    return low, high


def is_dt(value: str) -> bool:
    return dt_bounds(value) is not None


def is_da(value: str) -> bool:
    return _DA_RE.fullmatch(value) is not None and dt_bounds(value) is not None


def parse_range(value: str) -> tuple[datetime | None, datetime | None] | None:
    """A DA/DT query value: single (its precision), 'lo-hi', 'lo-' or '-hi'. None when invalid (also '-')."""
    single = dt_bounds(value)
    if single is not None:
        return single
    if value.count("-") < 1:
        return None
    low_s, _, high_s = value.partition("-")
    if not low_s and not high_s:
        return None
    low = dt_bounds(low_s) if low_s else None
    high = dt_bounds(high_s) if high_s else None
    if (low_s and low is None) or (high_s and high is None):
        return None
    return (low[0] if low else None, high[1] if high else None)


# --- dicom+json structure -----------------------------------------------------------------------------------------


def _known_vrs(tag: str) -> frozenset[str] | None:
    """The dictionary VR(s) of a standard tag, or None for private/unknown tags."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except KeyError:
        return None
    return frozenset(part.strip() for part in vr.split(" or "))


def _check_string_value(tag: str, vr: str, value: Any) -> None:
    if not isinstance(value, str):
        _reject(400, f"{tag_name(tag)} ({vr}): each value must be a string or null")
    if vr == "UI" and value and not is_uid(value):
        _reject(400, f"{tag_name(tag)} (UI): '{value}' is not a valid UID")
    if vr == "DA" and value and not is_da(value):
        _reject(400, f"{tag_name(tag)} (DA): '{value}' is not a valid date")
    if vr == "DT" and value and not is_dt(value):
        _reject(400, f"{tag_name(tag)} (DT): '{value}' is not a valid date-time")
    if vr == "TM" and value and _TM_RE.fullmatch(value) is None:
        _reject(400, f"{tag_name(tag)} (TM): '{value}' is not a valid time")


def _check_value(tag: str, vr: str, value: Any, where: str) -> Any:
    """Validate one item of an element's Value array for its VR; returns it (SQ items normalised)."""
    if vr == "SQ":
        if not isinstance(value, dict):
            _reject(400, f"{tag_name(tag)} (SQ): each item must be a JSON object")
        return normalize_dataset(value, f"{where}{tag_name(tag)}.")
    if value is None:
        return None
    if vr == "PN":
        if not isinstance(value, dict) or not set(value) <= _PN_GROUPS:
            _reject(400, f"{tag_name(tag)} (PN): each value must be an object with Alphabetic/Ideographic/Phonetic")
        if any(not isinstance(group, str) for group in value.values()):
            _reject(400, f"{tag_name(tag)} (PN): name component groups must be strings")
    elif vr in _STRING_VRS or vr == "AT":
        _check_string_value(tag, vr, value)
        if vr == "AT" and _TAG_RE.fullmatch(value) is None:
            _reject(400, f"{tag_name(tag)} (AT): '{value}' is not a tag")
    elif vr in ("IS", "DS", "SV", "UV"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            _reject(400, f"{tag_name(tag)} ({vr}): each value must be a number")
        if isinstance(value, str) and _NUMBER_RE.fullmatch(value) is None:
            _reject(400, f"{tag_name(tag)} ({vr}): '{value}' is not a number")
    elif vr in _NUMBER_VRS and (isinstance(value, bool) or not isinstance(value, int | float)):
        _reject(400, f"{tag_name(tag)} ({vr}): each value must be a number")
    return value


def normalize_element(tag: str, element: Any, where: str = "") -> dict[str, Any]:
    """Validate one dicom+json element ({"vr": ..., "Value"?: [...]}) against PS3.18 Annex F and the dictionary VR."""
    if not isinstance(element, dict):
        _reject(400, f"{where}{tag_name(tag)}: an element must be a JSON object")
    unknown = set(element) - _ELEMENT_KEYS
    if unknown:
        _reject(400, f"{where}{tag_name(tag)}: unexpected member(s) {sorted(unknown)}")
    vr = element.get("vr")
    if not isinstance(vr, str) or vr not in VRS:
        _reject(400, f"{where}{tag_name(tag)}: missing or invalid vr {vr!r}")
    known = _known_vrs(tag)
    if known is not None and vr not in known:
        _reject(400, f"{where}{tag_name(tag)}: vr {vr} does not match the dictionary VR {'/'.join(sorted(known))}")
    result: dict[str, Any] = {"vr": vr}
    present = [key for key in ("Value", "InlineBinary", "BulkDataURI") if key in element]
    if len(present) > 1:
        _reject(400, f"{where}{tag_name(tag)}: at most one of Value, InlineBinary, BulkDataURI")
    if "Value" in element:
        values = element["Value"]
        if vr in _BINARY_VRS:
            _reject(400, f"{where}{tag_name(tag)} ({vr}): binary values go in InlineBinary or BulkDataURI")
        if not isinstance(values, list):
            _reject(400, f"{where}{tag_name(tag)}: Value must be a JSON array")
        result["Value"] = [_check_value(tag, vr, value, where) for value in values]
    for key in ("InlineBinary", "BulkDataURI"):
        if key in element:
            if vr not in _BINARY_VRS and not (key == "BulkDataURI" and vr in _BULKDATA_VRS):
                _reject(400, f"{where}{tag_name(tag)} ({vr}): {key} is not allowed for this VR")
            if not isinstance(element[key], str):
                _reject(400, f"{where}{tag_name(tag)}: {key} must be a string")
            result[key] = element[key]
    return result


def normalize_dataset(obj: Any, where: str = "") -> Dataset:
    """Validate a dicom+json dataset; returns a copy keyed by upper-case tags."""
    if not isinstance(obj, dict):
        _reject(400, f"{where or 'body'}: a dataset must be a JSON object")
    result: Dataset = {}
    for key, element in obj.items():
        if _TAG_RE.fullmatch(key) is None:
            _reject(400, f"{where}'{key}' is not a DICOM tag (8 hexadecimal digits)")
        tag = key.upper()
        if tag in result:
            _reject(400, f"{where}{tag_name(tag)} appears twice")
        result[tag] = normalize_element(tag, element, where)
    return result


def values_of(dataset: Dataset, tag: str) -> list[Any]:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    return list(values) if isinstance(values, list) else []


def text_of(value: Any) -> str:
    """A value as text: PN -> its Alphabetic group, numbers -> str, None -> ''."""
    if value is None:
        return ""
    if isinstance(value, dict):
        alphabetic = value.get("Alphabetic", "")
        return alphabetic if isinstance(alphabetic, str) else ""
    return str(value)


def first_text(dataset: Dataset, tag: str) -> str:
    for value in values_of(dataset, tag):
        text = text_of(value)
        if text:
            return text
    return ""


def has_value(dataset: Dataset, tag: str) -> bool:
    """Present with at least one non-empty value (or, for SQ, at least one item)."""
    element = dataset.get(tag)
    if element is None:
        return False
    if element["vr"] == "SQ":
        return bool(values_of(dataset, tag))
    return any(text_of(value) for value in values_of(dataset, tag))


def element(vr: str, *values: Any) -> dict[str, Any]:
    """A dicom+json element; no values -> present but empty."""
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def without_transaction_uid(dataset: Dataset) -> Dataset:
    answer = copy.deepcopy(dataset)
    answer.pop(TRANSACTION_UID, None)
    return answer


# --- the minimal valid create body per profile --------------------------------------------------------------------


def valid_workitem(
    profile: str,
    patient_id: str,
    study_uid: str,
    *,
    patient_name: str = "Doe^Jane",
    accession_number: str = "",
    procedure_step_label: str = "Imaging procedure",
    priority: str = "MEDIUM",
    scheduled: str = "20240101120000",
    input_readiness: str = "READY",
    patient_birth_date: str = "",
    patient_sex: str = "",
    admission_id: str = "",
    admitting_diagnoses_description: str = "",
    workitem_uid: str | None = None,
) -> Dataset:
    """The smallest create dataset each profile accepts (a dicom+json object; wrap it in a list for ``azure``).

    The workitem UID is left out unless ``workitem_uid`` is given (then as SOPInstanceUID; never for dcm4chee, which
    rejects it): send it in the query. StudyInstanceUID goes in the ReferencedRequestSequence item and at the top
    level (Type 1C), which is what Azure's StudyInstanceUID search key looks at.

    For ``azure`` and ``standard`` every Type 2 attribute is present; PatientBirthDate, PatientSex, AdmissionID and
    AdmittingDiagnosesDescription carry the values given here (``""``: present and empty).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown UPS-RS profile {profile!r}; expected one of {PROFILES}")
    dataset: Dataset = {
        SCHEDULED_PROCEDURE_STEP_PRIORITY: element("CS", priority),
        PROCEDURE_STEP_LABEL: element("LO", procedure_step_label),
        SCHEDULED_PROCEDURE_STEP_START_DATETIME: element("DT", scheduled),
        INPUT_READINESS_STATE: element("CS", input_readiness),
        PROCEDURE_STEP_STATE: element("CS", SCHEDULED),
        PATIENT_NAME: element("PN", {"Alphabetic": patient_name}),
        PATIENT_ID: element("LO", patient_id),
        STUDY_INSTANCE_UID: element("UI", study_uid),
    }
    request_item: Dataset = {
        STUDY_INSTANCE_UID: element("UI", study_uid),
        ACCESSION_NUMBER: element("SH", accession_number) if accession_number else element("SH"),
    }
    if profile == "dcm4chee":
        dataset[WORKLIST_LABEL] = element("LO", "WORKLIST")
        dataset[REFERENCED_REQUEST_SEQUENCE] = element("SQ", request_item)
        return dataset
    for tag in TYPE2_REFERENCED_REQUEST_ITEM:
        request_item.setdefault(tag, element(_vr_of(tag)))
    for tag in TYPE2_CREATE:
        dataset[tag] = element(_vr_of(tag))
    dataset[PATIENT_NAME] = element("PN", {"Alphabetic": patient_name})
    dataset[REFERENCED_REQUEST_SEQUENCE] = element("SQ", request_item)
    for tag, vr, value in ((PATIENT_BIRTH_DATE, "DA", patient_birth_date), (PATIENT_SEX, "CS", patient_sex),
                           (ADMISSION_ID, "LO", admission_id),
                           (ADMITTING_DIAGNOSES_DESCRIPTION, "LO", admitting_diagnoses_description)):
        dataset[tag] = element(vr, value) if value else element(vr)
    if profile == "standard":
        dataset[WORKLIST_LABEL] = element("LO", "WORKLIST")
    if workitem_uid is not None:
        dataset[SOP_INSTANCE_UID] = element("UI", workitem_uid)
    return dataset


def _vr_of(tag: str) -> str:
    known = _known_vrs(tag)
    if known is None or len(known) != 1:
        raise ValueError(f"no single dictionary VR for {tag_name(tag)}")
    return next(iter(known))


# --- search matching ----------------------------------------------------------------------------------------------


def parse_attribute_path(key: str) -> tuple[str, ...] | None:
    """'0040A370.00080050' or 'ReferencedRequestSequence.AccessionNumber' -> tag path; None if not attributes."""
    tags: list[str] = []
    for part in key.split("."):
        if _TAG_RE.fullmatch(part):
            tags.append(part.upper())
            continue
        number = tag_for_keyword(part)
        if number is None:
            return None
        tags.append(f"{number:08X}")
    return tuple(tags)


def _wildcard_match(pattern: str, value: str, *, ignore_case: bool) -> bool:
    regex = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _fuzzy_name_match(query: str, name: str) -> bool:
    """Azure's fuzzy PN matching: every query word prefixes some word of the name."""
    words = [word.lower() for word in re.split(r"[\^\s=]+", name) if word]
    return all(any(word.startswith(part.lower()) for word in words) for part in query.split() if part)


class _Filter:
    """One attribute match key of a search."""

    def __init__(self, profile: str, key: str, path: tuple[str, ...], value: str, fuzzy: bool) -> None:
        self.profile = profile
        self.key = key
        self.path = path
        self.value = value
        self.fuzzy = fuzzy
        self.vrs = _known_vrs(path[-1]) or frozenset()
        self.range: tuple[datetime | None, datetime | None] | None = None
        if self.vrs & {"DA", "DT"} and value:
            self.range = parse_range(value)
            if self.range is None:
                _reject(400, f"invalid date/time value '{value}' for search key {key}")

    def matches(self, dataset: Dataset) -> bool:
        if not self.value:  # universal matching
            return True
        if self.profile != "azure" and self.path == (STUDY_INSTANCE_UID,):
            # The study of a workitem: top-level StudyInstanceUID or any ReferencedRequestSequence item's.
            return self._match(dataset, self.path) or self._match(dataset, (REFERENCED_REQUEST_SEQUENCE,
                                                                             STUDY_INSTANCE_UID))
        return self._match(dataset, self.path)

    def _match(self, dataset: Dataset, path: tuple[str, ...]) -> bool:
        element_ = dataset.get(path[0])
        if not isinstance(element_, dict):
            return False
        if len(path) > 1:
            return any(isinstance(item, dict) and self._match(item, path[1:]) for item in values_of(dataset, path[0]))
        vr = element_["vr"]
        texts = [text_of(value) for value in values_of(dataset, path[0])]
        return any(self._match_value(vr, text) for text in texts if text)

    def _match_value(self, vr: str, stored: str) -> bool:
        if self.range is not None and vr in ("DA", "DT"):
            bounds = dt_bounds(stored)
            if bounds is None:
                return False
            low, high = self.range
            return (low is None or bounds[0] >= low) and (high is None or bounds[0] <= high)
        if self.profile == "azure":
            if vr == "PN" and self.fuzzy:
                return _fuzzy_name_match(self.value, stored)
            return stored.casefold() == self.value.casefold()
        if vr == "UI":
            return stored in [uid.strip() for uid in re.split(r"[,\\]", self.value)]
        return _wildcard_match(self.value, stored, ignore_case=vr == "PN")


# --- the simulator ------------------------------------------------------------------------------------------------


class UpsSimulator:
    """A UPS-RS server of one profile. ``app`` is the ASGI app; state is in ``workitems``; ``requests`` logs calls."""

    def __init__(self, profile: str) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown UPS-RS profile {profile!r}; expected one of {PROFILES}")
        self.profile = profile
        self.base_path = BASE_PATHS[profile]
        self.workitems: dict[str, Dataset] = {}
        self.studies: dict[str, str] = {}  # the image archive's studies: StudyInstanceUID -> PatientID
        self.studies_path = self.base_path.removesuffix("/workitems") + "/studies"
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        self.app = Starlette(routes=[Route("/{rest:path}", self._dispatch, methods=methods)])

    # -- test helpers ---------------------------------------------------------------------------------------------

    def state(self, uid: str) -> str:
        return first_text(self.workitems[uid], PROCEDURE_STEP_STATE)

    def transaction_uid(self, uid: str) -> str:
        return first_text(self.workitems[uid], TRANSACTION_UID)

    def claim(self, uid: str, transaction_uid: str | None = None) -> str:
        """Another performer takes the workitem: SCHEDULED -> IN PROGRESS. Returns the Transaction UID."""
        transaction_uid = transaction_uid or new_uid()
        with self._lock:
            if self.state(uid) != SCHEDULED:
                raise ValueError(f"workitem {uid} is {self.state(uid)}, not SCHEDULED")
            self.workitems[uid][TRANSACTION_UID] = element("UI", transaction_uid)
            self._set_state(uid, IN_PROGRESS)
        return transaction_uid

    def complete(self, uid: str) -> None:
        with self._lock:
            self._set_state(uid, COMPLETED)

    def cancel(self, uid: str) -> None:
        with self._lock:
            self._set_state(uid, CANCELED)

    def _set_state(self, uid: str, state: str) -> None:
        self.workitems[uid][PROCEDURE_STEP_STATE] = element("CS", state)

    # -- HTTP -----------------------------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        query = request.url.query
        self.requests.append((request.method, path, query))
        pairs = parse_qsl(query, keep_blank_values=True)
        try:
            return await self._route(request, path, pairs)
        except UpsReject as rejection:
            return self._error(request, rejection)

    async def _route(self, request: Request, path: str, pairs: list[tuple[str, str]]) -> Response:
        if path == self.studies_path and request.method == "GET":
            return self._search_studies(request, pairs)
        if path != self.base_path and not path.startswith(self.base_path + "/"):
            _reject(404, f"no resource at {path}")
        parts = [part for part in path[len(self.base_path):].split("/") if part]
        requester = _query_value(pairs, "requester")
        kind: str | None = None
        if not parts:
            kind = "workitems"
        elif len(parts) == 1:
            kind = "workitem"
        elif parts[1] in ("cancelrequest", "state") and (
            len(parts) == 2 or (len(parts) == 3 and self.profile == "dcm4chee")
        ):
            kind = parts[1]
            if len(parts) == 3:  # dcm4chee's own form: .../cancelrequest/{requester}, .../state/{requester}
                requester = parts[2]
        if kind is None:
            _reject(404, f"no resource at {path}")
        method = request.method
        if kind == "workitems" and method == "POST":
            return await self._create(request, pairs)
        if kind == "workitems" and method == "GET":
            return self._search(request, pairs)
        if kind == "workitem" and method == "GET":
            return self._retrieve(request, parts[0])
        if kind == "workitem" and method == "POST":
            _reject(501, "Update Workitem is not simulated")
        if kind == "cancelrequest" and method == "POST":
            return await self._cancel_request(request, parts[0], requester)
        if kind == "state" and method == "PUT":
            return await self._change_state(request, parts[0], requester)
        _reject(405, f"{method} is not allowed on {path}")

    def _base_url(self, request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}{self.base_path}"

    def _warning(self, request: Request, message: str) -> str:
        text = f"299 {self._base_url(request)}: {message}"
        return text.encode("ascii", "backslashreplace").decode("ascii")

    def _error(self, request: Request, rejection: UpsReject) -> Response:
        headers = dict(rejection.headers)
        if self.profile == "azure":
            return JSONResponse(rejection.message, status_code=rejection.status, headers=headers)
        headers.setdefault("Warning", self._warning(request, rejection.message))
        return Response(status_code=rejection.status, headers=headers)

    # -- bodies ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _require_dicom_json(request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != DICOM_JSON:
            _reject(415, f"Content-Type must be {DICOM_JSON}, not '{content_type}'")

    async def _read_dataset(self, request: Request, *, optional: bool = False) -> Dataset | None:
        """The request's single dataset: azure wants a JSON array of one; the others take an object or that."""
        body = await request.body()
        if optional and not body.strip():
            return None
        self._require_dicom_json(request)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            _reject(400, "the body is not valid JSON")
        if isinstance(payload, list):
            if len(payload) != 1:
                _reject(400, f"expected exactly one dataset in the array, got {len(payload)}")
            payload = payload[0]
        elif self.profile == "azure":
            _reject(400, "the body must be a JSON array of datasets")
        return normalize_dataset(payload)

    @staticmethod
    def _accepts_dicom_json(request: Request) -> bool:
        accept = request.headers.get("accept")
        if not accept:
            return True
        media = {part.split(";")[0].strip().lower() for part in accept.split(",")}
        return bool(media & {"*/*", "application/*", DICOM_JSON})

    # -- create ---------------------------------------------------------------------------------------------------

    async def _create(self, request: Request, pairs: list[tuple[str, str]]) -> Response:
        dataset = await self._read_dataset(request)
        assert dataset is not None
        if self.profile == "azure":
            uid = self._prepare_azure(dataset, pairs)
        elif self.profile == "dcm4chee":
            uid = self._prepare_dcm4chee(dataset, pairs)
        else:
            uid = self._prepare_standard(dataset, pairs)
        dataset[SOP_CLASS_UID] = element("UI", UPS_SOP_CLASS_UID)
        dataset[SOP_INSTANCE_UID] = element("UI", uid)
        dataset[TRANSACTION_UID] = element("UI")
        dataset[SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATETIME] = element(
            "DT", datetime.now(UTC).strftime("%Y%m%d%H%M%S.%f"))
        with self._lock:
            if uid in self.workitems:
                _reject(409, self._duplicate_message(uid))
            self.workitems[uid] = dataset
        location = f"{self._base_url(request)}/{uid}"
        headers = {"Location": location}
        if self.profile == "azure":
            headers["Content-Location"] = location
        return Response(status_code=201, headers=headers)

    def _duplicate_message(self, uid: str) -> str:
        if self.profile == "azure":
            return f"Workitem instance with UID '{uid}' already exists."
        if self.profile == "dcm4chee":
            return "The UPS already exists."
        return f"A workitem with UID {uid} already exists."

    def _prepare_azure(self, dataset: Dataset, pairs: list[tuple[str, str]]) -> str:
        """Microsoft's SetSpecifiedAttributesForCreate, then AddWorkitemDatasetValidator."""
        uid = pairs[0][0] if pairs else ""
        if pairs and not is_uid(uid):
            _reject(400, f"The workitem UID '{uid}' in the query is not a valid UID.")
        in_body = first_text(dataset, SOP_INSTANCE_UID)
        if uid and in_body and in_body != uid:
            _reject(400, f"The SOP Instance UID '{in_body}' does not match the workitem UID '{uid}' in the query.")
        uid = uid or in_body
        if not uid:
            _reject(400, f"The required tag '{tag_name(SOP_INSTANCE_UID)}' is missing.")
        dataset[WORKLIST_LABEL] = element("LO", "worklist")
        dataset[PROCEDURE_STEP_STATE] = element("CS", SCHEDULED)
        for tag in (SCHEDULED_PROCEDURE_STEP_PRIORITY, PROCEDURE_STEP_LABEL, SCHEDULED_PROCEDURE_STEP_START_DATETIME,
                    INPUT_READINESS_STATE):
            if tag not in dataset:
                _reject(400, f"The required tag '{tag_name(tag)}' is missing.")
            if not has_value(dataset, tag):
                _reject(400, f"The required tag '{tag_name(tag)}' is missing a value.")
        for tag in TYPE2_CREATE:  # present; empty is fine (RequirementCode.TwoTwo checks presence only)
            if tag not in dataset:
                _reject(400, f"The required tag '{tag_name(tag)}' is missing.")
        if has_value(dataset, TRANSACTION_UID):
            _reject(400, f"The tag '{tag_name(TRANSACTION_UID)}' must be empty.")
        self._check_common_create(dataset, azure_style=True)
        return uid

    def _prepare_dcm4chee(self, dataset: Dataset, pairs: list[tuple[str, str]]) -> str:
        """dcm4chee's createUPS: create-iod.xml, then 'ProcedureStepState must be SCHEDULED'."""
        uid = _query_value(pairs, "workitem")
        if uid is not None and not is_uid(uid):
            _reject(400, f"Invalid workitem UID: {uid}")
        for tag in (SOP_CLASS_UID, SOP_INSTANCE_UID):
            if has_value(dataset, tag):
                _reject(400, f"Not allowed Attribute {tag_name(tag)}")
        for tag in (SCHEDULED_PROCEDURE_STEP_START_DATETIME, INPUT_READINESS_STATE,
                    SCHEDULED_PROCEDURE_STEP_PRIORITY, PROCEDURE_STEP_LABEL):
            if tag not in dataset:
                _reject(400, f"Missing Attribute {tag_name(tag)}")
            if not has_value(dataset, tag):
                _reject(400, f"Missing Attribute Value {tag_name(tag)}")
        self._check_enumerations(dataset, lambda tag, value: f"Invalid Attribute Value {tag_name(tag)}: {value}")
        if first_text(dataset, PROCEDURE_STEP_STATE) != SCHEDULED:
            _reject(400, "The provided value of UPS State was not SCHEDULED")
        if not has_value(dataset, WORKLIST_LABEL):
            dataset[WORKLIST_LABEL] = element("LO", DCM4CHEE_AET)
        return uid or new_uid()

    def _prepare_standard(self, dataset: Dataset, pairs: list[tuple[str, str]]) -> str:
        """PS3.18 §11.4 with PS3.4 Table CC.2.5-3 (N-CREATE, SCU requirements)."""
        uid = _query_value(pairs, "workitem") or ""
        if uid and not is_uid(uid):
            _reject(400, f"The workitem query parameter '{uid}' is not a valid UID")
        in_body = first_text(dataset, SOP_INSTANCE_UID)
        if uid and in_body and in_body != uid:
            _reject(400, f"SOPInstanceUID {in_body} does not match the workitem query parameter {uid}")
        uid = uid or in_body
        if not uid:
            _reject(400, "No workitem UID: give the workitem query parameter or SOPInstanceUID")
        sop_class = first_text(dataset, SOP_CLASS_UID)
        if sop_class and sop_class != UPS_SOP_CLASS_UID:
            _reject(400, f"SOPClassUID must be {UPS_SOP_CLASS_UID}, not {sop_class}")
        for tag in (SCHEDULED_PROCEDURE_STEP_PRIORITY, PROCEDURE_STEP_LABEL, SCHEDULED_PROCEDURE_STEP_START_DATETIME,
                    INPUT_READINESS_STATE, PROCEDURE_STEP_STATE):
            if not has_value(dataset, tag):
                _reject(400, f"Missing Type 1 attribute {tag_name(tag)}")
        if first_text(dataset, PROCEDURE_STEP_STATE) != SCHEDULED:
            _reject(400, f"ProcedureStepState must be SCHEDULED, not {first_text(dataset, PROCEDURE_STEP_STATE)}")
        for tag in (*TYPE2_CREATE, WORKLIST_LABEL):
            if tag not in dataset:
                _reject(400, f"Missing Type 2 attribute {tag_name(tag)}")
        if has_value(dataset, TRANSACTION_UID):
            _reject(400, f"TransactionUID {tag_name(TRANSACTION_UID)} must be empty on creation")
        if not has_value(dataset, WORKLIST_LABEL):
            dataset[WORKLIST_LABEL] = element("LO", "WORKLIST")
        self._check_common_create(dataset, azure_style=False)
        return uid

    @staticmethod
    def _check_enumerations(dataset: Dataset, message: Callable[[str, str], str]) -> None:
        priority = first_text(dataset, SCHEDULED_PROCEDURE_STEP_PRIORITY)
        if priority not in PRIORITIES:
            _reject(400, message(SCHEDULED_PROCEDURE_STEP_PRIORITY, priority))
        readiness = first_text(dataset, INPUT_READINESS_STATE)
        if readiness not in INPUT_READINESS_STATES:
            _reject(400, message(INPUT_READINESS_STATE, readiness))

    def _check_common_create(self, dataset: Dataset, *, azure_style: bool) -> None:
        """The nested Table CC.2.5-3 requirements shared by azure and standard, and (standard only) enumerated values:
        Microsoft's validator checks requirement codes, not the values of ScheduledProcedureStepPriority or
        InputReadinessState (its own E2E fixtures send random ones)."""
        if not azure_style:
            self._check_enumerations(dataset, lambda tag, value: f"Invalid value '{value}' for {tag_name(tag)}")
        for item in values_of(dataset, REFERENCED_REQUEST_SEQUENCE):
            if not has_value(item, STUDY_INSTANCE_UID):
                _reject(400, f"Missing {tag_name(STUDY_INSTANCE_UID)} in a "
                             f"{tag_name(REFERENCED_REQUEST_SEQUENCE)} item")
            for tag in TYPE2_REFERENCED_REQUEST_ITEM:
                if tag not in item:
                    _reject(400, f"Missing Type 2 attribute {tag_name(tag)} in a "
                                 f"{tag_name(REFERENCED_REQUEST_SEQUENCE)} item")
            for code in values_of(item, REQUESTED_PROCEDURE_CODE_SEQUENCE):
                if not has_value(code, CODE_MEANING):
                    _reject(400, f"Missing {tag_name(CODE_MEANING)} in a "
                                 f"{tag_name(REQUESTED_PROCEDURE_CODE_SEQUENCE)} item")
        for sequence in CODE_SEQUENCES:
            for code in values_of(dataset, sequence):
                if not has_value(code, CODE_MEANING):
                    _reject(400, f"Missing {tag_name(CODE_MEANING)} in a {tag_name(sequence)} item")
        for item in values_of(dataset, INPUT_INFORMATION_SEQUENCE):  # Referenced Instances and Access Macro
            for tag in (TYPE_OF_INSTANCES, REFERENCED_SOP_SEQUENCE):
                if not has_value(item, tag):
                    _reject(400, f"Missing {tag_name(tag)} in a {tag_name(INPUT_INFORMATION_SEQUENCE)} item")
            for reference in values_of(item, REFERENCED_SOP_SEQUENCE):
                for tag in (REFERENCED_SOP_CLASS_UID, REFERENCED_SOP_INSTANCE_UID):
                    if not has_value(reference, tag):
                        _reject(400, f"Missing {tag_name(tag)} in a {tag_name(REFERENCED_SOP_SEQUENCE)} item")
        for sequence in (PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE, UPS_PERFORMED_PROCEDURE_SEQUENCE):
            if any(item for item in values_of(dataset, sequence)):
                _reject(400, f"{tag_name(sequence)} must not have content on creation")

    # -- retrieve -------------------------------------------------------------------------------------------------

    def _not_found(self, uid: str) -> NoReturn:
        if self.profile == "azure":
            _reject(404, f"The workitem instance '{uid}' is not found.")
        if self.profile == "dcm4chee":
            _reject(404, "Specified SOP Instance UID does not exist")
        _reject(404, f"Workitem {uid} not found")

    def _retrieve(self, request: Request, uid: str) -> Response:
        if not self._accepts_dicom_json(request):
            _reject(406, f"only {DICOM_JSON} is available")
        with self._lock:
            dataset = self.workitems.get(uid)
            if dataset is None:
                self._not_found(uid)
            body = [without_transaction_uid(dataset)]
        return Response(json.dumps(body), media_type=DICOM_JSON)

    # -- search ---------------------------------------------------------------------------------------------------

    def _search(self, request: Request, pairs: list[tuple[str, str]]) -> Response:
        if not self._accepts_dicom_json(request):
            _reject(406, f"only {DICOM_JSON} is available")
        limit, offset, filters = self._parse_search(pairs)
        with self._lock:
            matches = [without_transaction_uid(dataset) for dataset in self.workitems.values()
                       if all(search_filter.matches(dataset) for search_filter in filters)]
        page = matches[offset:] if limit is None else matches[offset:offset + limit]
        if not page:
            return Response(status_code=204)
        headers: dict[str, str] = {}
        remaining = len(matches) - offset - len(page)
        if remaining > 0 and self.profile != "azure":
            headers["Warning"] = self._warning(request, f"There are {remaining} additional results that can be "
                                                        "requested")
        return Response(json.dumps(page), media_type=DICOM_JSON, headers=headers)

    def _parse_search(self, pairs: list[tuple[str, str]]) -> tuple[int | None, int, list[_Filter]]:
        azure = self.profile == "azure"
        limit: int | None = AZURE_SEARCH_LIMIT_DEFAULT if azure else None
        offset = 0
        fuzzy = False
        seen: set[tuple[str, ...]] = set()
        attribute_pairs: list[tuple[str, tuple[str, ...], str]] = []
        for key, value in pairs:
            if key in SEARCH_PARAMETERS[self.profile]:
                if key == "limit":
                    limit = _int_parameter(key, value, minimum=1)
                    if azure and limit > AZURE_SEARCH_LIMIT_MAX:
                        _reject(400, f"The limit must be between 1 and {AZURE_SEARCH_LIMIT_MAX}.")
                elif key == "offset":
                    offset = _int_parameter(key, value, minimum=0)
                elif key == "fuzzymatching":
                    if value not in ("true", "false"):
                        _reject(400, f"Invalid value '{value}' for fuzzymatching: true or false")
                    fuzzy = value == "true"
                elif key == "includefield":
                    self._check_includefield(value)
                continue
            path = parse_attribute_path(key)
            if path is None:
                _reject(400, f"The query parameter '{key}' is not supported." if azure
                        else f"Invalid query parameter {key}")
            if azure:
                if path not in AZURE_SEARCHABLE:
                    _reject(400, f"The search parameter '{key}' is not supported for workitems.")
                if not value.strip():
                    _reject(400, f"The query parameter '{key}' cannot have an empty value.")
                if path in seen:
                    _reject(400, f"The attribute '{key}' is specified more than once.")
                seen.add(path)
            attribute_pairs.append((key, path, value))
        filters = [_Filter(self.profile, key, path, value, fuzzy) for key, path, value in attribute_pairs]
        return limit, offset, filters

    def _check_includefield(self, value: str) -> None:
        for field in value.split(","):
            if field == "all":
                continue
            path = parse_attribute_path(field)
            if path is None or (self.profile == "azure" and len(path) > 1):
                _reject(400, f"Unknown includefield attribute '{field}'.")

    def _search_studies(self, request: Request, pairs: list[tuple[str, str]]) -> Response:
        """QIDO-RS at the study level, over ``studies``: StudyInstanceUID (UID list matching) and PatientID (single
        value matching) keys, ``includefield``, ``limit`` and ``offset``; anything else is 400."""
        if not self._accepts_dicom_json(request):
            _reject(406, f"only {DICOM_JSON} is available")
        limit: int | None = None
        offset = 0
        wanted_studies: set[str] | None = None
        wanted_patient: str | None = None
        for key, value in pairs:
            if key == "limit":
                limit = _int_parameter(key, value, minimum=1)
            elif key == "offset":
                offset = _int_parameter(key, value, minimum=0)
            elif key == "includefield":
                continue
            elif parse_attribute_path(key) == (STUDY_INSTANCE_UID,):
                wanted_studies = {uid.strip() for uid in value.split(",")}
            elif parse_attribute_path(key) == (PATIENT_ID,):
                wanted_patient = value
            else:
                _reject(400, f"Invalid query parameter {key}")
        matches = [{STUDY_INSTANCE_UID: element("UI", study), PATIENT_ID: element("LO", patient_id)}
                   for study, patient_id in self.studies.items()
                   if (wanted_studies is None or study in wanted_studies)
                   and (wanted_patient is None or patient_id == wanted_patient)]
        page = matches[offset:] if limit is None else matches[offset:offset + limit]
        if not page:
            return Response(status_code=204)
        return Response(json.dumps(page), media_type=DICOM_JSON)

    # -- cancel request -------------------------------------------------------------------------------------------

    async def _cancel_request(self, request: Request, uid: str, requester: str | None) -> Response:
        if self.profile == "dcm4chee" and not requester:
            _reject(400, "Missing query parameter: requester")
        if self.profile == "azure":
            self._require_dicom_json(request)
            await self._read_dataset(request)
        else:
            await self._read_dataset(request, optional=True)
        with self._lock:
            dataset = self.workitems.get(uid)
            if dataset is None:
                self._not_found(uid)
            state = first_text(dataset, PROCEDURE_STEP_STATE)
            if state == SCHEDULED:
                self._set_state(uid, CANCELED)
                return Response(status_code=202)
        already = "The UPS is already in the requested state of CANCELED."
        if self.profile == "azure":
            if state == CANCELED:
                raise UpsReject(409, f"The workitem '{uid}' is already in the canceled state.",
                                {"Warning": self._warning(request, already)})
            _reject(400, f"The workitem '{uid}' is in the {state} state and cannot be canceled: only SCHEDULED "
                         "workitems can.")
        if state == CANCELED:
            if self.profile == "dcm4chee":
                return Response(status_code=202, headers={"Warning": self._warning(request, already)})
            _reject(409, already)
        if state == COMPLETED:
            _reject(409, "The UPS is already COMPLETED.")
        _reject(409, "The performer cannot be contacted")  # IN PROGRESS: no Watch/Event channel to the performer

    # -- change state ---------------------------------------------------------------------------------------------

    async def _change_state(self, request: Request, uid: str, requester: str | None) -> Response:
        azure = self.profile == "azure"
        if self.profile == "dcm4chee" and not requester:
            _reject(400, "Missing query parameter: requester")
        dataset_in = await self._read_dataset(request)
        assert dataset_in is not None
        target = first_text(dataset_in, PROCEDURE_STEP_STATE)
        transaction = first_text(dataset_in, TRANSACTION_UID)
        if not target:
            _reject(400, "The Procedure Step State is missing.")
        if target not in (SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED):
            _reject(400, "The Procedure Step State is invalid.")
        if target == SCHEDULED:
            _reject(400 if azure else 409, "The UPS state may not be changed to SCHEDULED.")
        if not transaction:
            _reject(400, "The Transaction UID is missing.")
        conflict = 400 if azure else 409
        wrong_uid = 409 if self.profile == "dcm4chee" else 400
        inconsistent = "The submitted request is inconsistent with the current state of the UPS Instance."
        with self._lock:
            stored = self.workitems.get(uid)
            if stored is None:
                self._not_found(uid)
            state = first_text(stored, PROCEDURE_STEP_STATE)
            if target == IN_PROGRESS:
                if state != SCHEDULED:
                    _reject(conflict, inconsistent)
                stored[TRANSACTION_UID] = element("UI", transaction)
                self._set_state(uid, IN_PROGRESS)
                return Response(status_code=200)
            if state == target:
                return Response(status_code=200, headers={
                    "Warning": self._warning(request, f"The UPS is already in the requested state of {target}.")})
            if state != IN_PROGRESS:
                _reject(conflict, inconsistent)
            if transaction != first_text(stored, TRANSACTION_UID):
                _reject(wrong_uid, "The Transaction UID is incorrect.")
            if target == COMPLETED and not _meets_completed_requirements(stored):
                _reject(conflict, "The UPS does not meet the final state requirements of COMPLETED.")
            self._set_state(uid, target)
        return Response(status_code=200)


def _meets_completed_requirements(dataset: Dataset) -> bool:
    """PS3.4 CC.2.5.1.1 (as dcm4chee checks it): performed procedure start and end date-times are set."""
    return any(has_value(item, PERFORMED_PROCEDURE_STEP_START_DATETIME)
               and has_value(item, PERFORMED_PROCEDURE_STEP_END_DATETIME)
               for item in values_of(dataset, UPS_PERFORMED_PROCEDURE_SEQUENCE))


def _query_value(pairs: list[tuple[str, str]], key: str) -> str | None:
    for name, value in pairs:
        if name == key:
            return value
    return None


def _int_parameter(key: str, value: str, *, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        _reject(400, f"Invalid value '{value}' for {key}")
    return int(value)
