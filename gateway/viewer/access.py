"""Who is calling `/dicomweb`, and what they may reach.

A token comes in `Authorization: Bearer` or, as OHIF sends it, a `token` query parameter (never passed upstream);
both present and different is refused. A viewer token (from `GET /token`) opens exactly one study; the gateway's own
JWTs open everything (a clinician) or one patient's studies, read-only (a patient).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.audit.facts import note_actor, note_patient
from gateway.audit.records import Actor
from gateway.auth.callers import Authenticator, Caller, Role, bearer_credentials, note_caller
from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.tags import PATIENT_ID, STUDY_UID
from gateway.errors import Forbidden, OutOfScope, Unauthorized
from gateway.exams.routes import Exams
from gateway.upstream.ownership import Resource
from gateway.viewer.tokens import ViewerGrant, ViewerRole, ViewerTokens


@dataclass(frozen=True, slots=True)
class Access:
    """What the caller may reach: one study (viewer token), one patient's studies, or everything."""

    study: str | None = None
    patient: str | None = None
    can_store: bool = False

    def holds(self, dataset: DicomJson) -> bool:
        """Whether a dataset the PACS answered belongs to the caller (a dataset without the attribute does not)."""
        return ((self.patient is None or dataset.string(PATIENT_ID) == self.patient)
                and (self.study is None or dataset.string(STUDY_UID) == self.study))


class Gatekeeper:
    """Turns a request's token into an `Access`, and answers 404 for what lies outside it."""

    def __init__(self, *, authenticator: Authenticator, tokens: ViewerTokens, exams: Exams) -> None:
        self._authenticator = authenticator
        self._tokens = tokens
        self._exams = exams

    async def access(self, request: Request) -> Access:
        query = request.query_params.getlist("token")
        header = request.headers.get("authorization")
        bearer = bearer_credentials(header) if header is not None else None
        if len(query) > 1 or (query and bearer is not None and query[0] != bearer):
            raise Unauthorized("two different tokens: send one, in the Authorization header or the token parameter")
        raw = bearer if bearer is not None else (query[0] if query else None)
        if raw is not None and self._tokens.is_viewer_token(raw):
            grant: ViewerGrant = self._tokens.verify(raw)
            note_actor(Actor(subject=grant.user, roles=(f"viewer-{grant.role.value}",),
                             address=request.client.host if request.client else None))
            note_patient(grant.patient)
            return Access(study=grant.study, patient=grant.patient, can_store=grant.role is ViewerRole.DIAGNOSTIC)
        if raw is not None and header is None:  # the gateway's own JWT, sent as a query parameter
            scope = {**request.scope, "headers": [*request.scope["headers"],
                                                  (b"authorization", f"Bearer {raw}".encode())]}
            request = Request(scope, request.receive)
        caller: Caller = await self._authenticator.authenticate(request)
        note_caller(caller, request)
        if Role.CLINICIAN in caller.roles:
            return Access(can_store=True)
        if Role.PATIENT in caller.roles and caller.patient_id is not None:
            return Access(patient=caller.patient_id)
        raise Forbidden("the token does not grant access to DICOMweb", {"required_roles": ["clinician", "patient"]})

    async def check_study(self, access: Access, study: str, series: str | None) -> None:
        """404 for a study (or series) outside the caller's reach, the same answer as for one that does not exist."""
        if access.study is not None and study != access.study:
            raise OutOfScope("no such study", {"study": study})
        if access.patient is not None and not await self._exams.ownership.holds(access.patient,
                                                                                 Resource(study, series)):
            raise OutOfScope("no such study", {"study": study})

    async def check_alone(self, access: Access, resource: Resource) -> None:
        """For answers that carry no PatientID to check: the resource must be the caller's alone under its UID."""
        if access.patient is not None and not await self._exams.ownership.holds_only(access.patient, resource):
            raise OutOfScope("no such resource", {"uid": resource.uid})
