"""Whose data a caller may touch: the one rule every patient-scoped route applies."""

from __future__ import annotations

from gateway.auth.callers import Caller, Role
from gateway.errors import Forbidden

EXAMS_ROLES = frozenset({Role.CLINICIAN, Role.PATIENT})


def require_patient_access(caller: Caller, patient_id: str) -> None:
    """Clinicians may name any patient; a patient only the one in its token (compared exactly)."""
    if Role.CLINICIAN in caller.roles:
        return
    if Role.PATIENT in caller.roles and caller.patient_id == patient_id:
        return
    raise Forbidden("this token does not grant access to that patient's data", {"parameter": "PatientId"})
