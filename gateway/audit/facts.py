"""What a request's code learns that its audit record needs, noted as the request goes (`audit.recorder` reads it).

A leaf module: the authenticators, the scope checks and the error handler note facts here without depending on the
rest of the audit trail. Outside an audited request (the trail off, an unaudited route) every note is a no-op.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from gateway.audit.records import Actor


@dataclass(slots=True)
class AuditFacts:
    """What the request's code learnt that the record needs; filled as the request goes."""

    actor: Actor | None = None
    patient_id: str | None = None
    studies: list[str] = field(default_factory=list)
    refusal: str | None = None  # the error code the caller was refused with


_current: ContextVar[AuditFacts | None] = ContextVar("gateway_audit_facts", default=None)


def enter_facts(facts: AuditFacts) -> Token[AuditFacts | None]:
    return _current.set(facts)


def leave_facts(token: Token[AuditFacts | None]) -> None:
    _current.reset(token)


def current_facts() -> AuditFacts | None:
    return _current.get()


def note_actor(actor: Actor) -> None:
    facts = _current.get()
    if facts is not None:
        facts.actor = actor


def note_patient(patient_id: str) -> None:
    facts = _current.get()
    if facts is not None:
        facts.patient_id = patient_id


def note_refusal(code: str) -> None:
    facts = _current.get()
    if facts is not None:
        facts.refusal = code


def note_study(study_uid: str) -> None:
    """A study the request touched that its path does not name (an upload's)."""
    facts = _current.get()
    if facts is not None and study_uid not in facts.studies:
        facts.studies.append(study_uid)
