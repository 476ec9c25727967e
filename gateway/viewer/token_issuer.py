"""`GET /token`: a viewer token for one study, made here or asked of the external viewer's token service."""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.callers import Caller, Role
from gateway.dicom.tags import PATIENT_ID, STUDY_UID
from gateway.dicom.uid import is_valid_uid
from gateway.edge.params import bad_parameter, validate_patient_id
from gateway.errors import Conflict, Forbidden, NotFound, UpstreamFailed
from gateway.exams.routes import Exams
from gateway.upstream.ownership import Resource
from gateway.viewer.tokens import ViewerRole, ViewerTokens


class ViewerTokenIssuer:
    """`GET /token?studyUID=S&patientID=P&user=U&role=patient|diagnostic`."""

    def __init__(self, *, tokens: ViewerTokens, exams: Exams, external_endpoint: str | None = None,
                 external_auth: str | None = None) -> None:
        """`external_endpoint`: an external viewer's token service (VIEWER_GET_TOKEN_ENDPOINT) that issues the tokens
        instead; `external_auth`: the bearer token the gateway shows it (VIEWER_AUTHORIZATION_TOKEN)."""
        self._tokens = tokens
        self._exams = exams
        self._external = external_endpoint
        self._external_auth = external_auth

    async def token(self, request: Request, caller: Caller) -> Response:
        params = request.query_params
        study = params.get("studyUID", "")
        if not is_valid_uid(study):
            raise bad_parameter("studyUID", "required, a valid UID (1-64 digits and dots, no leading zeros)")
        role_name = params.get("role", ViewerRole.PATIENT.value)
        if role_name not in (ViewerRole.PATIENT.value, ViewerRole.DIAGNOSTIC.value):
            raise bad_parameter("role", "patient or diagnostic")
        role = ViewerRole(role_name)
        patient = params.get("patientID")
        if patient is not None:
            patient = validate_patient_id(patient, "patientID")
        if Role.CLINICIAN not in caller.roles:
            if role is not ViewerRole.PATIENT:
                raise Forbidden("a patient may only ask for role=patient", {"parameter": "role"})
            if patient is not None and patient != caller.patient_id:
                raise Forbidden("this token does not grant access to that patient's data", {"parameter": "patientID"})
            patient = caller.patient_id
        user = params.get("user", caller.subject)[:128]
        owner = await self._owner(study, patient)
        if owner is None:
            raise NotFound("no such study", {"studyUID": study})
        if self._external is not None:
            return await self._ask_external(study, owner, user, role)
        return JSONResponse({"token": self._tokens.issue(study=study, patient=owner, user=user, role=role),
                             "expiresIn": self._tokens.ttl_s}, headers={"Cache-Control": "no-store"})

    async def _ask_external(self, study: str, patient: str, user: str, role: ViewerRole) -> Response:
        """The external viewer's token service (VIEWER_GET_TOKEN_ENDPOINT), answered in this API's shape."""
        assert self._external is not None
        headers = {"Accept": "application/json"}
        if self._external_auth:
            headers["Authorization"] = f"Bearer {self._external_auth}"
        params = {"studyUID": study, "patientID": patient, "user": user, "role": role.value}
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.get(self._external, params=params, headers=headers)
            payload = answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            payload = None
            answer = None
        if not isinstance(payload, dict) or not isinstance(payload.get("token"), str):
            raise UpstreamFailed("the viewer's token service did not answer with a token",
                                 {"upstream_status": answer.status_code if answer is not None else None})
        expires = payload.get("expiresIn")
        return JSONResponse({"token": payload["token"],
                             "expiresIn": expires if isinstance(expires, int) else self._tokens.ttl_s},
                            headers={"Cache-Control": "no-store"})

    async def _owner(self, study: str, patient: str | None) -> str | None:
        """The patient whose part of the study the token opens: `patient` when the PACS holds the study for them;
        without one, the study's only patient (409 when it holds more than one: the caller must say whose)."""
        if patient is not None:
            return patient if await self._exams.ownership.holds(patient, Resource(study)) else None
        found = await self._exams.qido("studies", [("StudyInstanceUID", study), ("includefield", PATIENT_ID)])
        owners = {ds.string(PATIENT_ID) or "" for ds in found if ds.string(STUDY_UID) in (None, study)}
        if len(owners) > 1:
            raise Conflict("the study holds data of more than one patient: name one with patientID",
                           {"parameter": "patientID"})
        return owners.pop() if owners else None
