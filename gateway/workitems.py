"""`/workitems`: a worklist of simple JSON workitems, kept in the PACS as UPS-RS workitems (PS3.18 §11), shown to
clients in the Modality Worklist layout of the contract page (`worklist_mwl`), whatever the dialect.

- `POST /workitems`: the simple fields (`worklist_fields.FIELDS`) are validated, translated (`worklist_ups`) and
  created upstream with the workitem UID placed where the dialect wants it; the answer is the created workitem as
  the PACS then returns it, in the MWL layout (so a client sees what was stored, not what was meant). `409` when the
  study already has a workitem that is SCHEDULED or IN PROGRESS; a CANCELED or COMPLETED one does not block a new
  one (UPS-RS keys workitems by their own UID: the PACS holds both).
- `GET /workitems`: a search, always narrowed to one patient for a patient caller; every answer is filtered to exact
  PatientID equality before it leaves (Microsoft's service matches case-insensitively, others take wildcards).
  Cancelled workitems are removed as far as clients are concerned (the contract page: "the workitem has been
  removed"): without a `ProcedureStepState` filter the search lists SCHEDULED, IN PROGRESS and COMPLETED ones
  (a completed procedure did happen), and `ProcedureStepState=CANCELED` lists the cancelled ones. `limit` and
  `offset` count the workitems answered, hidden ones aside: the gateway reads the PACS's matches page by page.
- `DELETE /workitems/{studyInstanceUID}`: UPS has no delete; the study's SCHEDULED workitems are cancelled with a
  cancel request. Only the performer that claimed an IN PROGRESS workitem can end it (it holds the lock), so the
  gateway answers 409 for those (and cancels nothing), as for a COMPLETED one. A study whose workitems are all
  cancelled has none left: 404, as for a study that never had one.

The Transaction UID (0008,1195) is the lock on a claimed workitem: the MWL layout is a list of known tags, so it is
never part of an answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    exact_short_string,
    integer_parameter,
    optional_patient_id,
    single,
)
from gateway.scope import EXAMS_ROLES, require_patient_access
from gateway.settings import PacsProfileName, Settings
from gateway.upstream import UpstreamAnswer, UpstreamClient
from gateway.vr import VrError
from gateway.worklist_fields import date_range, parse_workitem
from gateway.worklist_mwl import mwl_workitem
from gateway.worklist_ups import Dataset, build_create, element

DICOM_JSON = "application/dicom+json"
MAX_BODY_BYTES = 2 * 1024 * 1024  # a workitem is a few KB; room for a client's oversized field to get its 400
MAX_LIMIT = 200
DEFAULT_LIMIT = 100
MAX_OFFSET = 100_000
UPS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.34.6.1"  # Unified Procedure Step - Push SOP Class

SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
PATIENT_ID = "00100020"
STUDY_INSTANCE_UID = "0020000D"
PROCEDURE_STEP_STATE = "00741000"
REASON_FOR_CANCELLATION = "00741238"
STATES = ("SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED")
ACTIVE = frozenset({"SCHEDULED", "IN PROGRESS"})  # the states that hold a study: 409 on a new workitem for it
HIDDEN = "CANCELED"  # removed, as far as clients are concerned

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
        dataset = build_create(
            values, dialect=dialect.name, study_uid=study_uid,
            priority=self._settings.worklist_priority, input_readiness=self._settings.worklist_input_readiness,
            worklist_label=self._settings.worklist_label,
        )
        active = [ds for ds in await self._workitems_of_study(study_uid) if _first(ds, PROCEDURE_STEP_STATE) in ACTIVE]
        if active:
            state = _first(active[0], PROCEDURE_STEP_STATE)
            raise Conflict(f"this StudyInstanceUID already has a workitem that is {state}",
                           {"StudyInstanceUID": study_uid, "state": state})
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
        return JSONResponse(mwl_workitem(created), headers={"Cache-Control": "no-store"})

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

        def shown(dataset: Dataset) -> bool:
            # Exact PatientID equality whatever the PACS's matching rules; cancelled ones only when asked for.
            return ((patient_id is None or _first(dataset, PATIENT_ID) == patient_id)
                    and (state is not None or _first(dataset, PROCEDURE_STEP_STATE) != HIDDEN))

        found = await self._search_shown(query, shown, limit=limit, offset=offset)
        return JSONResponse([mwl_workitem(ds) for ds in found], headers={"Cache-Control": "no-store"})

    async def _search_shown(self, query: list[tuple[str, str]], shown: Callable[[Dataset], bool], *, limit: int,
                            offset: int) -> list[Dataset]:
        """The page `offset`, `limit` of the matches that `shown` keeps, read from the PACS in pages of MAX_LIMIT.

        A page shorter than asked for is the last one (the dialects honour `limit` up to 200, ups-rs.md).
        """
        kept: list[Dataset] = []
        upstream_offset = 0
        while len(kept) < offset + limit:
            page = await self._search(query, limit=MAX_LIMIT, offset=upstream_offset)
            kept.extend(ds for ds in page if shown(ds))
            if len(page) < MAX_LIMIT:
                break
            upstream_offset += len(page)
        return kept[offset:offset + limit]

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
        found = [ds for ds in await self._workitems_of_study(study_uid)
                 if _may_see(caller, ds) and _first(ds, PROCEDURE_STEP_STATE) != HIDDEN]
        if not found:  # none, another patient's (no existence oracle), or all cancelled already: removed
            raise NotFound("no workitem for this study", {"StudyInstanceUID": study_uid})
        states = {_first(ds, PROCEDURE_STEP_STATE) for ds in found}
        if "IN PROGRESS" in states:
            raise Conflict(
                "the workitem is IN PROGRESS: a performer has claimed it, and only that performer can end it "
                "(the gateway is not its owner)", {"StudyInstanceUID": study_uid, "state": "IN PROGRESS"})
        scheduled = [ds for ds in found if _first(ds, PROCEDURE_STEP_STATE) == "SCHEDULED"]
        if not scheduled:
            state = sorted(states)[0]
            raise Conflict(f"the workitem is already {state}", {"StudyInstanceUID": study_uid, "state": state})
        for dataset in scheduled:  # more than one only after two creates raced for the study (README)
            await self._cancel_one(dialect, _first(dataset, SOP_INSTANCE_UID), study_uid)
        return Response(status_code=204)

    async def _cancel_one(self, dialect: Dialect, uid: str, study_uid: str) -> None:
        params = [("requester", self._settings.pacs_requester_aet)] if dialect.needs_requester else []
        reason = {REASON_FOR_CANCELLATION: element("LT", "Cancelled by a user through dicom-gateway")}
        answer = await self._upstream.request(
            "POST", f"workitems/{uid}/cancelrequest", operation="ups_cancel", params=params,
            headers={"Content-Type": DICOM_JSON, "Accept": DICOM_JSON}, content=dialect.body(reason),
        )
        if answer.status_code in (200, 202, 204):
            return
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
    """A date or a range (`A-B`, `A-`, `-B`; YYYYMMDD or YYYY-MM-DD) as a ScheduledProcedureStepStartDateTime range
    covering whole days."""
    try:
        low, high = date_range(value)
    except VrError as exc:
        raise bad_parameter("ScheduledProcedureStepStartDate", str(exc)) from None
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
