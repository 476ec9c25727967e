"""Which audit record each request makes: the gateway's routes in PS3.15 A.5.3 terms (issue 13).

`Classifier(peer=...)` is given to `recorder.AuditMiddleware`. The table `EVENTS` maps (method, route template) to
the event a successful request is; `records.py` says why each event is the A.5.3 message it is. Requests refused
for who the caller is are Security Alerts: `401` (a token that failed verification) as Node Authentication, `403`
and refusals the routes note as out of scope as Use of Restricted Function. Other failures are the event they
tried to be, with a failure outcome; when the patient or study that event must name never became known (a
malformed request, a `404`), the record is the query it was, so that no request goes unrecorded.
Routes outside the table (health, metrics, `/uid`, the API description) are not audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.audit.recorder import Exchange
from gateway.audit.records import (
    Action,
    Actor,
    AlertType,
    AuditRecord,
    DataFlow,
    EventKind,
    InstanceRef,
    Outcome,
    Peer,
    StudyRef,
)


@dataclass(frozen=True, slots=True)
class Audited:
    kind: EventKind
    action: Action
    data_flow: DataFlow | None = None


QUERY = Audited(EventKind.QUERY, Action.EXECUTE)
DOWNLOAD = Audited(EventKind.INSTANCES_TRANSFERRED, Action.READ, DataFlow.TO_ACTOR)
UPLOAD = Audited(EventKind.INSTANCES_TRANSFERRED, Action.CREATE, DataFlow.FROM_ACTOR)
VIEW = Audited(EventKind.INSTANCES_ACCESSED, Action.READ)
ALERT = Audited(EventKind.SECURITY_ALERT, Action.EXECUTE)
TOKEN = ALERT  # a viewer token issued: an informative alert (records.py)
_INSTANCE = "/exams/studies/{study}/series/{series}/instance/{instance}"
_DICOMWEB_LEVELS = ("/dicomweb/studies/{study}", "/dicomweb/studies/{study}/series/{series}",
                    "/dicomweb/studies/{study}/series/{series}/instances/{instance}")

Rule = Audited | Callable[[Exchange], Audited]


def _exam_file(exchange: Exchange) -> Audited:
    """`fileType=image/jpeg` is a thumbnail (a use of the instance), anything else the file itself (a copy)."""
    file_type = dict(exchange.query).get("fileType", "")
    return VIEW if file_type.lower().startswith("image/") else DOWNLOAD


def _worklist_search(exchange: Exchange) -> Audited:
    """Order Record names exactly one patient (A.5.3.13): a worklist search without one is a Query (A.5.3.10)."""
    return Audited(EventKind.ORDER_RECORD, Action.READ) if exchange.facts.patient_id else QUERY


EVENTS: dict[tuple[str, str], Rule] = {
    ("GET", "/exams/studies"): QUERY,
    ("GET", "/exams/studies/{study}/series"): QUERY,
    ("GET", "/exams/studies/{study}/series/{series}/instances"): QUERY,
    ("GET", _INSTANCE): _exam_file,
    ("POST", "/exams"): UPLOAD,
    ("GET", "/token"): TOKEN,
    ("POST", "/workitems"): Audited(EventKind.ORDER_RECORD, Action.CREATE),
    ("GET", "/workitems"): _worklist_search,
    ("DELETE", "/workitems/{studyInstanceUID}"): Audited(EventKind.ORDER_RECORD, Action.UPDATE),
    ("POST", "/new-exam-callback"): Audited(EventKind.PROCEDURE_RECORD, Action.CREATE),
    ("GET", "/new-exam-callback/events"): QUERY,
    ("GET", "/new-exam-callback/events/{id}"): QUERY,
    ("POST", "/new-exam-callback/events/{id}/redeliver"): QUERY,
    ("GET", "/audit-events"): QUERY,
    ("GET", "/dicomweb/studies"): QUERY,
    ("GET", "/dicomweb/series"): QUERY,
    ("GET", "/dicomweb/instances"): QUERY,
    ("GET", "/dicomweb/studies/{study}/series"): QUERY,
    ("GET", "/dicomweb/studies/{study}/instances"): QUERY,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances"): QUERY,
    **{("GET", level): DOWNLOAD for level in _DICOMWEB_LEVELS},
    **{("GET", level + "/metadata"): DOWNLOAD for level in _DICOMWEB_LEVELS},
    **{("GET", level + "/rendered"): VIEW for level in _DICOMWEB_LEVELS},
    **{("GET", level + "/thumbnail"): VIEW for level in _DICOMWEB_LEVELS},
    ("GET", _DICOMWEB_LEVELS[2] + "/frames/{frames}"): DOWNLOAD,
    ("GET", _DICOMWEB_LEVELS[2] + "/frames/{frames}/rendered"): VIEW,
    ("GET", _DICOMWEB_LEVELS[2] + "/bulk/{attribute:path}"): DOWNLOAD,
    ("POST", "/dicomweb/studies"): UPLOAD,
    ("POST", "/dicomweb/studies/{study}"): UPLOAD,
}
_PATIENT_SPELLINGS = ("PatientId", "PatientID", "patientID", "patientId", "00100020")
# Paths no resource route took (a 404, a bad UID) still reach the gateway's data paths: recorded, as queries.
FALLBACKS = ("/dicomweb/",)


def _outcome(status: int) -> Outcome:
    if status < 400:
        return Outcome.SUCCESS
    return Outcome.MINOR_FAILURE if status < 500 else Outcome.SERIOUS_FAILURE


def _studies(exchange: Exchange) -> tuple[StudyRef, ...]:
    params = exchange.path_params
    study = params.get("study") or params.get("studyInstanceUID") or dict(exchange.query).get("studyUID")
    if not study:
        return tuple(StudyRef(uid) for uid in exchange.facts.studies)
    series = (params["series"],) if params.get("series") else ()
    instances = (InstanceRef(params["instance"]),) if params.get("instance") else ()
    return (StudyRef(study, series, instances),)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every record of one exchange shares."""

    exchange: Exchange
    actor: Actor
    peer: Peer

    def record(self, event: Audited, *, alert: AlertType | None = None, description: str = "") -> AuditRecord:
        exchange = self.exchange
        return AuditRecord(
            kind=event.kind, action=event.action, outcome=_outcome(exchange.status), when=exchange.when,
            request_id=exchange.request_id, actor=self.actor, peer=self.peer, patient_id=exchange.facts.patient_id,
            studies=_studies(exchange), resource=exchange.route, data_flow=event.data_flow, alert=alert,
            query=tuple(exchange.query) if event.kind is EventKind.QUERY else None,
            outcome_description=description or ("" if exchange.status < 400 else str(exchange.status)),
        )


class Classifier:
    def __init__(self, *, peer: Peer) -> None:
        self._peer = peer

    def __call__(self, exchange: Exchange) -> AuditRecord | None:
        rule = EVENTS.get((exchange.method if exchange.method != "HEAD" else "GET", exchange.route))
        if rule is None and not exchange.route.startswith(FALLBACKS):
            return None
        # The patient the request names comes first: "who tried to see patient X" is asked of the patient named,
        # also when the caller is another patient (whose own id the authenticator noted).
        named = [value for name, value in exchange.query if name in _PATIENT_SPELLINGS]
        if named:
            exchange.facts.patient_id = named[0]
        actor = exchange.facts.actor or Actor(subject="")
        if exchange.client is not None and exchange.client != actor.address:
            actor = Actor(subject=actor.subject, roles=actor.roles, issuer=actor.issuer, address=exchange.client,
                          is_requestor=actor.is_requestor)  # not dataclasses.replace: a fifth of the record's time
        context = _Context(exchange, actor, self._peer)
        if exchange.status == 401:
            return context.record(ALERT, alert=AlertType.NODE_AUTHENTICATION,
                                  description=exchange.facts.refusal or "the token was refused")
        if exchange.status == 403 or exchange.facts.refusal is not None:
            return context.record(ALERT, alert=AlertType.USE_OF_RESTRICTED_FUNCTION,
                                  description=exchange.facts.refusal or "outside the caller's rights")
        if rule is TOKEN and exchange.status < 400:
            return context.record(ALERT, alert=AlertType.OBJECT_SECURITY_ATTRIBUTES_CHANGED,
                                  description="viewer token issued")
        event = QUERY if rule is None or rule is TOKEN else (rule if isinstance(rule, Audited) else rule(exchange))
        try:
            return context.record(event)
        except ValueError:  # the patient or study the event must name never became known: the query it was
            return context.record(QUERY)
