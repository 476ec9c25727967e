"""`/workitems`: a worklist of simple JSON workitems, kept in the PACS as UPS-RS workitems (PS3.18 §11).

- `POST /workitems`: the simple fields (`worklist_fields.FIELDS`) are validated, translated (`worklist_ups`) and
  created upstream with the workitem UID placed where the dialect wants it; the answer is the created workitem as
  the PACS then returns it (so a client sees what was stored, not what was meant).
- `GET /workitems`: a search, always narrowed to one patient for a patient caller; every answer is filtered to exact
  PatientID equality before it leaves (Microsoft's service matches case-insensitively, others take wildcards).
- `DELETE /workitems/{studyInstanceUID}`: UPS has no delete; the study's SCHEDULED workitem is cancelled with a
  cancel request. Only the performer that claimed an IN PROGRESS workitem can end it (it holds the lock), so the
  gateway answers 409 for those, as for COMPLETED and CANCELED ones.

The Transaction UID (0008,1195) is the lock on a claimed workitem: it is removed from everything returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import Authenticator, Caller, Role, guarded
from gateway.bodies import read_json
from gateway.dicom import UidGenerator, is_valid_uid
from gateway.errors import (
    BadRequest,
    Conflict,
    NotFound,
    NotImplementedByUpstream,
    UnprocessableContent,
    UpstreamFailed,
)
from gateway.qido import (
    PATIENT_ID_SPELLINGS,
    bad_parameter,
    date_or_range,
    exact_short_string,
    integer_parameter,
    optional_patient_id,
    single,
)
from gateway.scope import EXAMS_ROLES, require_patient_access
from gateway.settings import PacsProfileName, Settings
from gateway.upstream import UpstreamAnswer, UpstreamClient
from gateway.worklist_fields import parse_workitem
from gateway.worklist_ups import Dataset, MissingForDialect, build_create, element

DICOM_JSON = "application/dicom+json"
MAX_BODY_BYTES = 2 * 1024 * 1024  # a workitem is a few KB; room for a client's oversized field to get its 400
MAX_LIMIT = 200
DEFAULT_LIMIT = 100
MAX_OFFSET = 100_000
UPS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.34.6.1"  # Unified Procedure Step - Push SOP Class

TRANSACTION_UID = "00081195"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
PATIENT_ID = "00100020"
STUDY_INSTANCE_UID = "0020000D"
PROCEDURE_STEP_STATE = "00741000"
REASON_FOR_CANCELLATION = "00741238"
STATES = ("SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED")

# Search parameters of `GET /workitems` and the UPS-RS attribute each one matches (every dialect supports these).
SEARCH_KEYS = {
    "AccessionNumber": "ReferencedRequestSequence.AccessionNumber",
    "ScheduledProcedureStepStartDate": "ScheduledProcedureStepStartDateTime",
    "ProcedureStepState": "ProcedureStepState",
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between UPS-RS servers (shared/upstreams/ups-rs.md), for the calls the gateway makes."""

    name: str
    bare_uid_query: bool  # create: `?{uid}` (Microsoft) instead of `?workitem={uid}`
    array_bodies: bool  # bodies are a JSON array of one dataset
    sop_uids_in_body: bool  # create: SOPClassUID and SOPInstanceUID in the body (dcm4chee refuses them)
    needs_requester: bool  # cancel request: `?requester={AET}` is mandatory

    def create_path(self, uid: str) -> str:
        return f"workitems?{uid}" if self.bare_uid_query else f"workitems?workitem={uid}"

    def body(self, dataset: Dataset) -> bytes:
        return json.dumps([dataset] if self.array_bodies else dataset).encode()


DIALECTS = {
    PacsProfileName.AZURE: Dialect("azure", bare_uid_query=True, array_bodies=True, sop_uids_in_body=True,
                                   needs_requester=False),
    PacsProfileName.DCM4CHEE: Dialect("dcm4chee", bare_uid_query=False, array_bodies=False, sop_uids_in_body=False,
                                      needs_requester=True),
    PacsProfileName.STANDARD: Dialect("standard", bare_uid_query=False, array_bodies=True, sop_uids_in_body=True,
                                      needs_requester=False),
}


def without_lock(dataset: Dataset) -> Dataset:
    """The workitem as clients see it: no Transaction UID, at any depth."""
    out: Dataset = {}
    for tag, value in dataset.items():
        if tag.upper() == TRANSACTION_UID:
            continue
        if isinstance(value, dict) and value.get("vr") == "SQ" and isinstance(value.get("Value"), list):
            value = {**value, "Value": [without_lock(item) if isinstance(item, dict) else item
                                        for item in value["Value"]]}
        out[tag] = value
    return out


def _first(dataset: Dataset, tag: str) -> str:
    element_ = dataset.get(tag)
    values = element_.get("Value") if isinstance(element_, dict) else None
    if not isinstance(values, list) or not values:
        return ""
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic", "")
    return str(value).strip() if value is not None else ""


def _upstream_message(answer: UpstreamAnswer) -> str:
    """The PACS's reason: Microsoft sends a JSON string body, dcm4chee and PS3.18 a `Warning: 299 ...` header."""
    warning = answer.headers.get("Warning", "")
    if warning:
        # `299 {agent}: {text}` (PS3.18 §8.6.3); the agent is often a URL, so split at the first ": ".
        return warning.split(": ", 1)[-1].strip().strip('"') if warning.startswith("299 ") else warning
    try:
        payload = json.loads(answer.content) if answer.content else ""
    except ValueError:
        return answer.content[:300].decode("utf-8", "replace")
    return payload if isinstance(payload, str) else json.dumps(payload)[:300]


class Worklist:
    def __init__(self, upstream: UpstreamClient, uids: UidGenerator, settings: Settings) -> None:
        self._upstream = upstream
        self._uids = uids
        self._settings = settings
        self._dialect = DIALECTS.get(settings.pacs_profile)

    def _require_ups(self) -> Dialect:
        if self._dialect is None:
            raise NotImplementedByUpstream(
                f"the PACS profile '{self._settings.pacs_profile.value}' has no UPS-RS worklist: set PACS_PROFILE to "
                "azure, dcm4chee or standard for a PACS that offers one",
                {"setting": "PACS_PROFILE", "value": self._settings.pacs_profile.value,
                 "supported": [name.value for name in DIALECTS]},
            )
        return self._dialect

    # -- create ---------------------------------------------------------------------------------------------------

    async def create(self, request: Request, caller: Caller) -> Response:
        dialect = self._require_ups()
        values = parse_workitem(await read_json(request, max_bytes=MAX_BODY_BYTES, what="the workitem"))
        require_patient_access(caller, values["PatientID"])
        study_uid = values.get("StudyInstanceUID") or self._uids.new()
        try:
            dataset = build_create(
                values, dialect=dialect.name, study_uid=study_uid,
                priority=self._settings.worklist_priority, input_readiness=self._settings.worklist_input_readiness,
                worklist_label=self._settings.worklist_label,
                unknown_birth_date=self._settings.worklist_unknown_birth_date,
            )
        except MissingForDialect as exc:
            raise BadRequest(
                f"this PACS ({dialect.name}) needs {', '.join(exc.fields)} for a workitem (or set "
                "WORKLIST_UNKNOWN_BIRTH_DATE to a placeholder)",
                {"fields": [{"field": name, "message": "required by this PACS"} for name in exc.fields]},
            ) from None
        if await self._workitems_of_study(study_uid):
            raise Conflict("a workitem for this StudyInstanceUID already exists", {"StudyInstanceUID": study_uid})
        uid = self._uids.new()
        if dialect.sop_uids_in_body:
            dataset["00080016"] = element("UI", UPS_SOP_CLASS_UID)
            dataset["00080018"] = element("UI", uid)
        answer = await self._upstream.request(
            "POST", dialect.create_path(uid), operation="ups_create",
            headers={"Content-Type": DICOM_JSON, "Accept": DICOM_JSON}, content=dialect.body(dataset),
        )
        if answer.status_code == 409:
            raise Conflict("a workitem with this UID or for this study already exists",
                           {"StudyInstanceUID": study_uid, "upstream_message": _upstream_message(answer)})
        if answer.status_code not in (200, 201):
            raise UnprocessableContent("the PACS refused the workitem",
                                       {"upstream_status": answer.status_code,
                                        "upstream_message": _upstream_message(answer)})
        created = await self._retrieve(uid)
        return JSONResponse(without_lock(created), headers={"Cache-Control": "no-store"})

    async def _retrieve(self, uid: str) -> Dataset:
        answer = await self._upstream.request("GET", f"workitems/{uid}", operation="ups_retrieve",
                                              headers={"Accept": DICOM_JSON})
        if answer.status_code != 200:
            raise UpstreamFailed("the PACS did not return the workitem it created",
                                 {"upstream_status": answer.status_code, "upstream_message": _upstream_message(answer)})
        payload = answer.json()
        dataset = payload[0] if isinstance(payload, list) and payload else payload
        if not isinstance(dataset, dict):
            raise UpstreamFailed("the PACS returned a workitem that is not a dataset", {"operation": "ups_retrieve"})
        return dataset

    # -- search ---------------------------------------------------------------------------------------------------

    async def search(self, request: Request, caller: Caller) -> Response:
        self._require_ups()
        params = request.query_params
        allowed = {*PATIENT_ID_SPELLINGS, *SEARCH_KEYS, "limit", "offset"}
        unknown = sorted(set(params.keys()) - allowed)
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]}",
                             {"parameter": unknown[0], "allowed": sorted(allowed - {"PatientId", "patientId",
                                                                                    "PatientID"})})
        patient_id = optional_patient_id(params, "patientID")
        if Role.CLINICIAN not in caller.roles:
            if patient_id is None:
                patient_id = caller.patient_id  # a patient's search is always of their own workitems
            if patient_id is None:
                raise BadRequest("patientID is required", {"parameter": "patientID"})
            require_patient_access(caller, patient_id)
        query: list[tuple[str, str]] = []
        if patient_id is not None:
            query.append(("PatientID", patient_id))
        accession = single(params, "AccessionNumber")
        if accession is not None:
            query.append((SEARCH_KEYS["AccessionNumber"], exact_short_string("AccessionNumber", accession)))
        date = single(params, "ScheduledProcedureStepStartDate")
        if date is not None:
            query.append((SEARCH_KEYS["ScheduledProcedureStepStartDate"], _date_range(date)))
        state = single(params, "ProcedureStepState")
        if state is not None:
            if state not in STATES:
                raise bad_parameter("ProcedureStepState", f"one of {', '.join(STATES)}")
            query.append(("ProcedureStepState", state))
        limit = integer_parameter(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = integer_parameter(params, "offset", 0, 0, MAX_OFFSET)
        found = await self._search(query, limit=limit, offset=offset)
        if patient_id is not None:  # defence in depth: exact equality, whatever the PACS's matching rules
            found = [ds for ds in found if _first(ds, PATIENT_ID) == patient_id]
        return JSONResponse([without_lock(ds) for ds in found], headers={"Cache-Control": "no-store"})

    async def _search(self, query: list[tuple[str, str]], *, limit: int, offset: int) -> list[Dataset]:
        answer = await self._upstream.request(
            "GET", "workitems", operation="ups_search", headers={"Accept": DICOM_JSON},
            params=[*query, ("limit", str(limit)), ("offset", str(offset))],
        )
        if answer.status_code == 204 or (answer.status_code == 200 and not answer.content.strip()):
            return []
        if answer.status_code != 200:
            raise UpstreamFailed("the PACS refused the workitem search",
                                 {"upstream_status": answer.status_code, "upstream_message": _upstream_message(answer)})
        payload = answer.json()
        if not isinstance(payload, list):
            raise UpstreamFailed("the PACS answered a search with something other than a list",
                                 {"operation": "ups_search"})
        return [ds for ds in payload if isinstance(ds, dict)]

    async def _workitems_of_study(self, study_uid: str) -> list[Dataset]:
        found = await self._search([("StudyInstanceUID", study_uid)], limit=MAX_LIMIT, offset=0)
        return [ds for ds in found if _first(ds, STUDY_INSTANCE_UID) == study_uid]

    # -- cancel ---------------------------------------------------------------------------------------------------

    async def cancel(self, request: Request, caller: Caller) -> Response:
        dialect = self._require_ups()
        study_uid = request.path_params["studyInstanceUID"]
        if not is_valid_uid(study_uid):
            raise bad_parameter("studyInstanceUID", "not a valid UID (1-64 digits and dots, no leading zeros)")
        found = [ds for ds in await self._workitems_of_study(study_uid) if _may_see(caller, ds)]
        if not found:
            raise NotFound("no workitem for this study", {"StudyInstanceUID": study_uid})
        by_state = {_first(ds, PROCEDURE_STEP_STATE): ds for ds in found}
        scheduled = by_state.get("SCHEDULED")
        if scheduled is None:
            if "IN PROGRESS" in by_state:
                raise Conflict(
                    "the workitem is IN PROGRESS: a performer has claimed it, and only that performer can end it "
                    "(the gateway is not its owner)", {"StudyInstanceUID": study_uid, "state": "IN PROGRESS"})
            state = next(iter(by_state))
            raise Conflict(f"the workitem is already {state}", {"StudyInstanceUID": study_uid, "state": state})
        uid = _first(scheduled, SOP_INSTANCE_UID)
        params = [("requester", self._settings.pacs_requester_aet)] if dialect.needs_requester else []
        reason = {REASON_FOR_CANCELLATION: element("LT", "Cancelled by a user through dicom-gateway")}
        answer = await self._upstream.request(
            "POST", f"workitems/{uid}/cancelrequest", operation="ups_cancel", params=params,
            headers={"Content-Type": DICOM_JSON, "Accept": DICOM_JSON}, content=dialect.body(reason),
        )
        if answer.status_code in (200, 202, 204):
            return Response(status_code=204)
        if answer.status_code == 404:
            raise NotFound("no workitem for this study", {"StudyInstanceUID": study_uid})
        if answer.status_code in (400, 409):  # the state changed between the search and the request
            raise Conflict("the PACS refused to cancel the workitem: it is no longer SCHEDULED",
                           {"StudyInstanceUID": study_uid, "upstream_status": answer.status_code,
                            "upstream_message": _upstream_message(answer)})
        raise UpstreamFailed("the PACS failed to cancel the workitem",
                             {"upstream_status": answer.status_code, "upstream_message": _upstream_message(answer)})


def _may_see(caller: Caller, dataset: Dataset) -> bool:
    return Role.CLINICIAN in caller.roles or (caller.patient_id is not None
                                              and _first(dataset, PATIENT_ID) == caller.patient_id)


def _date_range(value: str) -> str:
    """A date or a range (`A-B`, `A-`, `-B`) as a ScheduledProcedureStepStartDateTime range covering whole days."""
    date_or_range("ScheduledProcedureStepStartDate", value)
    low, dash, high = value.partition("-")
    if not dash:
        return f"{low}000000-{low}235959"
    return f"{low + '000000' if low else ''}-{high + '235959' if high else ''}"


def routes(
    upstream: UpstreamClient, authenticator: Authenticator, uids: UidGenerator, settings: Settings
) -> list[Route]:
    worklist = Worklist(upstream, uids, settings)
    return [
        Route("/workitems", guarded(authenticator, EXAMS_ROLES, worklist.create), methods=["POST"]),
        Route("/workitems", guarded(authenticator, EXAMS_ROLES, worklist.search), methods=["GET"]),
        Route("/workitems/{studyInstanceUID}", guarded(authenticator, EXAMS_ROLES, worklist.cancel),
              methods=["DELETE"]),
    ]
