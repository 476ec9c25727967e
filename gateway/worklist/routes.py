"""`/workitems`: a worklist of simple JSON workitems, kept in the PACS as UPS-RS workitems (PS3.18 §11), shown to
clients in the Modality Worklist layout of the contract page (`worklist.mwl`), whatever the dialect.

- `POST /workitems`: the simple fields (`worklist.fields.FIELDS`) are validated, translated (`worklist.ups`) and
  created upstream with the workitem UID placed where the dialect wants it; the answer is the created workitem as
  the PACS then returns it, in the MWL layout (so a client sees what was stored, not what was meant). A study
  belongs to one patient, whoever the caller: a StudyInstanceUID that holds a workitem of another patient, in any
  state, or that patient's images in the PACS, is `409` with one answer (`uid_in_use`) that names neither the state
  nor which of the two it is, so that naming a UID tells nothing more about another patient's study. For the
  patient's own study, `409` when it already has a workitem that is SCHEDULED or IN PROGRESS (the state named); a
  CANCELED or COMPLETED one does not block a new one (UPS-RS keys workitems by their own UID: the PACS holds both).
  A StudyInstanceUID the gateway makes up (none given) is nobody's yet: nothing is looked up for it.
- `GET /workitems`: a search, always narrowed to one patient for a patient caller; every answer is filtered to exact
  PatientID equality before it leaves (Microsoft's service matches case-insensitively, others take wildcards).
  Cancelled workitems are removed as far as clients are concerned (the contract page: "the workitem has been
  removed"): without a `ProcedureStepState` filter the search lists SCHEDULED, IN PROGRESS and COMPLETED ones
  (a completed procedure did happen), and `ProcedureStepState=CANCELED` lists the cancelled ones. `limit` and
  `offset` count the workitems answered, hidden ones aside: the gateway reads the PACS's matches page by page.
- `DELETE /workitems/{studyInstanceUID}`: UPS has no delete; the study's SCHEDULED workitems are cancelled with a
  cancel request. They are found by one search per state that matters (IN PROGRESS, SCHEDULED, then COMPLETED),
  so that cancelled ones, however many, cannot push them off the page. Only the performer that claimed an IN
  PROGRESS workitem can end it (it holds the lock), so the gateway answers 409 for those (and cancels nothing), as
  for a COMPLETED one. A study whose workitems are all cancelled has none left: 404, as for a study that never had
  one.

Whose a workitem is: its PatientID read by the rule of every PatientID the gateway takes
(`identifiers.exact_identifier`): the one trailing pad space removed, nothing else. A stored ID without a single
reading (empty, other padding, a space other than U+0020, an invisible character) is nobody's: never a patient's
own, and another patient's when a create asks whether the study is free (fail closed).

Where a complete answer is needed (the create's check of a study, a cancel's search), the PACS's matches are read
page after page, at most MAX_STUDY_WORKITEMS of them; a study with more is `409` rather than half checked.

The Transaction UID (0008,1195) is the lock on a claimed workitem: the MWL layout is a list of known tags, so it is
never part of an answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit.facts import note_patient, note_study
from gateway.auth.callers import Authenticator, Caller, Role, guarded
from gateway.auth.scope import EXAMS_ROLES, require_patient_access
from gateway.dicom.media import DICOM_JSON
from gateway.dicom.tags import (
    PROCEDURE_STEP_STATE,
    REASON_FOR_CANCELLATION,
    SOP_INSTANCE_UID,
)
from gateway.dicom.uid import UidGenerator, is_valid_uid
from gateway.dicom.vr import VrError, day_range_dt, loose_da_range
from gateway.edge.bodies import read_json
from gateway.edge.params import (
    PATIENT_ID_SPELLINGS,
    bad_parameter,
    exact_short_string,
    integer_parameter,
    optional_patient_id,
    single,
)
from gateway.errors import (
    BadRequest,
    Conflict,
    NotFound,
    NotImplementedByUpstream,
    UnprocessableContent,
    UpstreamFailed,
)
from gateway.upstream.client import UpstreamAnswer, UpstreamClient
from gateway.upstream.ownership import Ownership, Resource
from gateway.upstream.profiles import PROFILES, UpsDialect
from gateway.worklist.fields import parse_workitem
from gateway.worklist.mwl import mwl_workitem
from gateway.worklist.ups import Dataset, build_create, element, first_value, of_study, patient_of

MAX_BODY_BYTES = 2 * 1024 * 1024  # a workitem is a few KB; room for a client's oversized field to get its 400
MAX_LIMIT = 200
DEFAULT_LIMIT = 100
MAX_OFFSET = 100_000
# The workitems of one study read for a complete answer (MAX_STUDY_PAGES pages of MAX_LIMIT); a study with more is
# refused (409), never half checked. Through the gateway a study holds one active workitem and whatever was cancelled
# or completed before it: a thousand is far beyond any real one.
MAX_STUDY_PAGES = 5
MAX_STUDY_WORKITEMS = MAX_STUDY_PAGES * MAX_LIMIT
UPS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.34.6.1"  # Unified Procedure Step - Push SOP Class

STATES = ("SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED")
ACTIVE = frozenset({"SCHEDULED", "IN PROGRESS"})  # the states that hold a study: 409 on a new workitem for it
HIDDEN = "CANCELED"  # removed, as far as clients are concerned

# Search parameters of `GET /workitems` and the UPS-RS attribute each one matches (every dialect supports these).
SEARCH_KEYS = {
    "AccessionNumber": "ReferencedRequestSequence.AccessionNumber",
    "ScheduledProcedureStepStartDate": "ScheduledProcedureStepStartDateTime",
    "ProcedureStepState": "ProcedureStepState",
}




def _uid_in_use(study_uid: str) -> Conflict:
    # One answer whatever holds the study (another patient's workitem in any state, or images): no state oracle.
    return Conflict("this StudyInstanceUID already holds another patient's data",
                    {"StudyInstanceUID": study_uid, "reason": "uid_in_use"})


def _too_many(study_uid: str) -> Conflict:
    return Conflict(f"this StudyInstanceUID has more than {MAX_STUDY_WORKITEMS} workitems, more than the gateway "
                    "reads to answer for it", {"StudyInstanceUID": study_uid, "reason": "too_many_workitems"})


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


def _start_dates(value: str) -> str:
    """A date or a range (`A-B`, `A-`, `-B`; YYYYMMDD or YYYY-MM-DD) as a ScheduledProcedureStepStartDateTime range
    covering whole days."""
    try:
        return day_range_dt(*loose_da_range(value))
    except VrError as exc:
        raise bad_parameter("ScheduledProcedureStepStartDate", str(exc)) from None


class Worklist:
    def __init__(self, *, upstream: UpstreamClient, uids: UidGenerator, priority: str, input_readiness: str,
                 label: str, requester_aet: str) -> None:
        """`priority`, `input_readiness` and `label` go into every workitem created (WORKLIST_*); `requester_aet`
        names the gateway where a dialect wants a requester (PACS_REQUESTER_AET)."""
        self._upstream = upstream
        # The image archive: the same upstream (PACS_SERVICE_URL serves QIDO-RS and UPS-RS alike), one study-level
        # search per create that names a StudyInstanceUID.
        self._ownership = Ownership(upstream)
        self._uids = uids
        self._priority = priority
        self._input_readiness = input_readiness
        self._label = label
        self._requester_aet = requester_aet
        self._profile = upstream.profile.name
        self._dialect = upstream.profile.ups

    def _require_ups(self) -> UpsDialect:
        if self._dialect is None:
            raise NotImplementedByUpstream(
                f"the PACS profile '{self._profile.value}' has no UPS-RS worklist: set PACS_PROFILE to "
                "azure, dcm4chee or standard for a PACS that offers one",
                {"setting": "PACS_PROFILE", "value": self._profile.value,
                 "supported": [name.value for name, profile in PROFILES.items() if profile.ups]},
            )
        return self._dialect

    # -- create ---------------------------------------------------------------------------------------------------

    async def create(self, request: Request, caller: Caller) -> Response:
        dialect = self._require_ups()
        values = parse_workitem(await read_json(request, max_bytes=MAX_BODY_BYTES, what="the workitem"))
        patient_id = values["PatientID"]
        note_patient(patient_id)  # the Order Record names the patient the body names, also when it is refused
        require_patient_access(caller, patient_id)
        given = values.get("StudyInstanceUID")
        study_uid = given or self._uids.new()
        note_study(study_uid)
        dataset = build_create(
            values, dialect=dialect.name, study_uid=study_uid,
            priority=self._priority, input_readiness=self._input_readiness, worklist_label=self._label,
        )
        if given is not None:  # a UID just made up (24 random digits at least) is nobody's
            await self._require_free(study_uid, patient_id)
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

    async def _require_free(self, study_uid: str, patient_id: str) -> None:
        """`Conflict` unless the study may take a new workitem of this patient (see the module docstring)."""
        found, complete = await self._matches([("StudyInstanceUID", study_uid)])
        workitems = [ds for ds in found if of_study(ds, study_uid)]
        if any(patient_of(ds) != patient_id for ds in workitems):
            raise _uid_in_use(study_uid)
        if await self._ownership.held_by_others(patient_id, [Resource(study_uid)]):
            raise _uid_in_use(study_uid)
        if not complete:  # the next page could hold another patient's: refuse rather than guess
            raise _too_many(study_uid)
        active = [ds for ds in workitems if first_value(ds, PROCEDURE_STEP_STATE) in ACTIVE]
        if active:
            state = first_value(active[0], PROCEDURE_STEP_STATE)
            raise Conflict(f"this StudyInstanceUID already has a workitem that is {state}",
                           {"StudyInstanceUID": study_uid, "state": state})

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
            query.append((SEARCH_KEYS["ScheduledProcedureStepStartDate"], _start_dates(date)))
        state = single(params, "ProcedureStepState")
        if state is not None:
            if state not in STATES:
                raise bad_parameter("ProcedureStepState", f"one of {', '.join(STATES)}")
            query.append(("ProcedureStepState", state))
        limit = integer_parameter(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = integer_parameter(params, "offset", 0, 0, MAX_OFFSET)

        def shown(dataset: Dataset) -> bool:
            # Exact PatientID equality whatever the PACS's matching rules; cancelled ones only when asked for.
            return ((patient_id is None or patient_of(dataset) == patient_id)
                    and (state is not None or first_value(dataset, PROCEDURE_STEP_STATE) != HIDDEN))

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

    async def _matches(self, query: list[tuple[str, str]]) -> tuple[list[Dataset], bool]:
        """Every match of `query`, read in pages of MAX_LIMIT up to MAX_STUDY_WORKITEMS, and whether that was all of
        them (a short page is the last one, as in `_search_shown`)."""
        found: list[Dataset] = []
        for _ in range(MAX_STUDY_PAGES):
            page = await self._search(query, limit=MAX_LIMIT, offset=len(found))
            found.extend(page)
            if len(page) < MAX_LIMIT:
                return found, True
        return found, False

    async def _in_state(self, caller: Caller, study_uid: str, state: str) -> list[Dataset]:
        """The study's workitems in `state` that the caller may see, all of them (`Conflict` beyond the cap).

        ProcedureStepState and StudyInstanceUID are search keys of every dialect (ups-rs.md); the answer is checked
        again here, whatever the PACS matched."""
        found, complete = await self._matches([("StudyInstanceUID", study_uid), ("ProcedureStepState", state)])
        if not complete:
            raise _too_many(study_uid)
        return [ds for ds in found if of_study(ds, study_uid) and first_value(ds, PROCEDURE_STEP_STATE) == state
                and _may_see(caller, ds)]

    # -- cancel ---------------------------------------------------------------------------------------------------

    async def cancel(self, request: Request, caller: Caller) -> Response:
        dialect = self._require_ups()
        study_uid = request.path_params["studyInstanceUID"]
        if not is_valid_uid(study_uid):
            raise bad_parameter("studyInstanceUID", "not a valid UID (1-64 digits and dots, no leading zeros)")
        if await self._in_state(caller, study_uid, "IN PROGRESS"):
            raise Conflict(
                "the workitem is IN PROGRESS: a performer has claimed it, and only that performer can end it "
                "(the gateway is not its owner)", {"StudyInstanceUID": study_uid, "state": "IN PROGRESS"})
        scheduled = await self._in_state(caller, study_uid, "SCHEDULED")
        if not scheduled:
            if await self._in_state(caller, study_uid, "COMPLETED"):
                raise Conflict("the workitem is already COMPLETED", {"StudyInstanceUID": study_uid,
                                                                     "state": "COMPLETED"})
            # None, another patient's (no existence oracle), or all cancelled already: removed.
            raise NotFound("no workitem for this study", {"StudyInstanceUID": study_uid})
        if (owner := patient_of(scheduled[0])) is not None:  # a clinician may cancel one that is nobody's
            note_patient(owner)
        for dataset in scheduled:  # more than one only after two creates raced for the study (docs/api/worklist.md)
            await self._cancel_one(dialect, first_value(dataset, SOP_INSTANCE_UID), study_uid)
        return Response(status_code=204)

    async def _cancel_one(self, dialect: UpsDialect, uid: str, study_uid: str) -> None:
        if not is_valid_uid(uid):  # the archive's value goes into the path: a UID, or nothing is sent
            raise UpstreamFailed("the PACS answered a workitem without a valid SOPInstanceUID")
        params = [("requester", self._requester_aet)] if dialect.needs_requester else []
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
                                              and patient_of(dataset) == caller.patient_id)


def routes(worklist: Worklist, authenticator: Authenticator) -> list[Route]:
    return [
        Route("/workitems", guarded(authenticator, EXAMS_ROLES, worklist.create), methods=["POST"]),
        Route("/workitems", guarded(authenticator, EXAMS_ROLES, worklist.search), methods=["GET"]),
        Route("/workitems/{studyInstanceUID}", guarded(authenticator, EXAMS_ROLES, worklist.cancel),
              methods=["DELETE"]),
    ]
