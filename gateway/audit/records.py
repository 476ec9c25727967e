"""An audit record: one access to the gateway (or one refusal), in DICOM PS3.15 Annex A.5 terms.

A record is what happened, as typed values; `gateway.audit.messages.to_xml` writes it as the PS3.15 A.5.1 XML
`AuditMessage` that is shipped to the audit record repository. A record is checked when it is built (the rules of
the A.5.3 message its kind names: which action codes, which participant objects are mandatory), so that every record
in the store can be written as a valid message.

## The events, and why these PS3.15 A.5.3 messages (codes from PS3.16 CID 400 and CID 403)

| gateway event                           | `EventKind`             | EventID (DCM)                         | action  |
|-----------------------------------------|-------------------------|---------------------------------------|---------|
| search (`/exams`, `/dicomweb` QIDO-RS)  | `QUERY`                 | 110112 Query                          | E       |
| download (DICOM, bulk data)             | `INSTANCES_TRANSFERRED` | 110104 DICOM Instances Transferred    | R       |
| upload (STOW-RS), completed             | `INSTANCES_TRANSFERRED` | 110104 DICOM Instances Transferred    | C or U  |
| upload, large, before the transfer      | `BEGIN_TRANSFERRING`    | 110102 Begin Transferring DICOM Inst. | E       |
| thumbnail, rendered frame               | `INSTANCES_ACCESSED`    | 110103 DICOM Instances Accessed       | R       |
| worklist create / search / cancel       | `ORDER_RECORD`          | 110109 Order Record                   | C, R, U |
| new-exam callback (the PACS acts)       | `PROCEDURE_RECORD`      | 110111 Procedure Record               | C       |
| viewer token issued                     | `SECURITY_ALERT`        | 110113 Security Alert, type 110135    | E       |
| refusal: bad or expired token           | `SECURITY_ALERT`        | 110113 Security Alert, type 110126    | E       |
| refusal: outside the caller's scope     | `SECURITY_ALERT`        | 110113 Security Alert, type 110132    | E       |

- Query (A.5.3.10) "describes the event of a Query being issued or received"; the gateway receives it and issues it
  to the PACS. A QIDO-RS search is not a DICOM query Data Set, so the query object is identified by its URI
  (RFC-3881 ID type 12) and its parameters are the ParticipantObjectQuery, as A.5.3.10 Note 2 allows for non-DICOM
  queries; the (110181 SOP Class UID) form would require a Transfer Syntax detail that a URL does not have.
- Downloads move DICOM instances from the PACS (source) to the caller (destination): Instances Transferred
  (A.5.3.7), action R (A.5.3.7: "If the Audit Source is either not the receiver, or otherwise does not know
  whether or not the instances previously were held by the receiving node, then use R"). Uploads move them the
  other way: C when the PACS did not hold them, U when it replaced some. `data_flow` says which way they went, so
  that the messages' Source (110153) and Destination (110152) roles are right.
- Thumbnails and rendered frames are a use of the instances, not a copy of them: Instances Accessed (A.5.3.6),
  "SOP Instances being viewed, utilized", action R.
- Worklist items are orders: Order Record (A.5.3.13); a cancel changes the item's state, so it is an update (U).
  Order Record requires the patient (1): a worklist search that names no patient is recorded as a `QUERY` (A.5.3.10
  names Modality Worklist and UPS queries as Query events).
- A new-exam callback is the PACS telling the gateway that an exam (a performed procedure, stored as a study) now
  exists: Procedure Record (A.5.3.15), "a procedure record being created", action C, with the PACS as the
  requesting actor and the study and patient as objects.
- Issuing a viewer token widens who may read one study: an informative Security Alert (outcome 0: "success implies
  an informative alert", A.5.3.11) of type (110135, DCM, "Object Security Attributes Changed"), the study its
  subject. No A.5.3 message is closer (User Authentication has no objects; Instances Accessed reads instances).
- Refusals are Security Alerts (A.5.3.11), as the issue asks: a token that fails verification (bad, expired) is
  (110126, DCM, "Node Authentication"), which A.5.3.11's note names for "every ... HTML connection" authenticated;
  a verified caller reaching outside its scope (another patient, a study outside a viewer token, an upload for
  another patient) is (110132, DCM, "Use of Restricted Function"), "a use of a restricted function has been
  attempted". The outcome is 4 (minor failure) when the refusal worked, per A.5.3.11: "A Minor or Serious failure
  indicates that mitigation efforts were effective".
- Each `/dicomweb` use of a viewer token is the event it is (Query, Instances Transferred or Accessed), with the
  viewer token's subject and role as the actor.

Two declared extensions of A.5.3 (A.5 b: "describe in its conformance statement any extensions"), both valid by
the A.5.1 schema: a Query and a Security Alert carry the patient participant object when the record names a
patient (A.5.3.10 and A.5.3.11 list none; "who accessed patient X, and was anyone refused" needs it), and every
participant object carries a ParticipantObjectDetail "RequestID" (the request id of the operational logs, which
A.5.2.1 asks audit identifiers to be matchable with).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, IntEnum, StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (PS3.15 A.5.1 `CodedValueType`): `csd-code`, `codeSystemName`, `originalText`."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


class EventKind(Enum):
    """The PS3.15 A.5.3 message a record is written as; the value is its EventID (PS3.16 CID 400)."""

    _value_: Code

    QUERY = _dcm("110112", "Query")  # A.5.3.10
    INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")  # A.5.3.6
    INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")  # A.5.3.7
    BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")  # A.5.3.3
    ORDER_RECORD = _dcm("110109", "Order Record")  # A.5.3.13
    PROCEDURE_RECORD = _dcm("110111", "Procedure Record")  # A.5.3.15
    SECURITY_ALERT = _dcm("110113", "Security Alert")  # A.5.3.11

    @property
    def event_id(self) -> Code:
        return self._value_


class AlertType(Enum):
    """A Security Alert's EventTypeCode (PS3.16 CID 403 "Security Alert Type Code"), mandatory in A.5.3.11."""

    _value_: Code

    NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")  # a token that fails verification
    USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")  # outside the caller's scope
    OBJECT_SECURITY_ATTRIBUTES_CHANGED = _dcm("110135", "Object Security Attributes Changed")  # viewer token issued

    @property
    def type_code(self) -> Code:
        return self._value_


class Action(StrEnum):
    """EventActionCode (A.5.1): Create, Read, Update, Delete, Execute."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator (A.5.1, A.5.2): success, or how bad the failure was."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # e.g. a refusal that worked: the caller was kept out (A.5.3.11)
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class DataFlow(StrEnum):
    """Which way DICOM instances went in a transfer: decides who is the Source (110153) and the Destination (110152)."""

    TO_ACTOR = "to-actor"  # a download: the PACS (through the gateway) sent, the actor received
    FROM_ACTOR = "from-actor"  # an upload: the actor sent, the PACS received


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: the token's subject, roles and issuer, and the client address (as seen through `TRUSTED_PROXIES`).

    `subject` is the token's `sub` ("" when no token was verified, e.g. a refused bad token); `issuer` is `iss` when
    known. For a new-exam callback the actor is the PACS.
    """

    subject: str
    roles: tuple[str, ...] = ()
    issuer: str | None = None
    address: str | None = None
    is_requestor: bool = True


@dataclass(frozen=True, slots=True)
class Peer:
    """The other active participant: the gateway process, acting for the PACS (or, for a callback, receiving it)."""

    user_id: str
    address: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceRef:
    sop_instance_uid: str
    sop_class_uid: str | None = None  # unknown when the gateway was only given the instance's UID


@dataclass(frozen=True, slots=True)
class StudyRef:
    """A study the event touched, with the series and instances of it that it named (A.5.3 "Studies (1..N)")."""

    study_uid: str
    series_uids: tuple[str, ...] = ()
    instances: tuple[InstanceRef, ...] = ()


# A.5.3: the action codes each message allows ("Enumerated value", "Shall be").
_ACTIONS: dict[EventKind, frozenset[Action]] = {
    EventKind.QUERY: frozenset({Action.EXECUTE}),
    EventKind.INSTANCES_ACCESSED: frozenset({Action.CREATE, Action.READ, Action.UPDATE, Action.DELETE}),
    EventKind.INSTANCES_TRANSFERRED: frozenset({Action.CREATE, Action.READ, Action.UPDATE}),
    EventKind.BEGIN_TRANSFERRING: frozenset({Action.EXECUTE}),
    EventKind.ORDER_RECORD: frozenset({Action.CREATE, Action.READ, Action.UPDATE, Action.DELETE}),
    EventKind.PROCEDURE_RECORD: frozenset({Action.CREATE, Action.READ, Action.UPDATE, Action.DELETE}),
    EventKind.SECURITY_ALERT: frozenset({Action.EXECUTE}),
}
# A.5.3: messages whose patient participant object is "(1)", and whose studies are "(1..N)".
_NEEDS_PATIENT = frozenset({
    EventKind.INSTANCES_ACCESSED, EventKind.INSTANCES_TRANSFERRED, EventKind.BEGIN_TRANSFERRING,
    EventKind.ORDER_RECORD, EventKind.PROCEDURE_RECORD,
})
_NEEDS_STUDY = frozenset({EventKind.INSTANCES_ACCESSED, EventKind.INSTANCES_TRANSFERRED, EventKind.BEGIN_TRANSFERRING})
_TRANSFERS = frozenset({EventKind.INSTANCES_TRANSFERRED, EventKind.BEGIN_TRANSFERRING})


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit record (issue 13: who, what, which patient and UIDs, the outcome and why, when, the request id).

    - `resource`: the URI (path and query) of what was asked for; the query object of a `QUERY`, and the alert
      subject of a `SECURITY_ALERT` (both need it);
    - `query`: the query parameters of a `QUERY`, in the order received (may be empty, must be given);
    - `alert`: the Security Alert's type, exactly for `SECURITY_ALERT`;
    - `data_flow`: exactly for the transfers (`INSTANCES_TRANSFERRED`, `BEGIN_TRANSFERRING`).

    Raises `ValueError` when the record cannot be a valid message of its kind. `to_json` and `from_json` are the
    stored form (`store.audit`, column `record`): exact for every value, hostile ones included (ASCII JSON, so a
    NUL or a lone surrogate is an escape, not a byte).
    """

    kind: EventKind
    action: Action
    outcome: Outcome
    when: datetime  # UTC, timezone-aware
    request_id: str
    actor: Actor
    peer: Peer
    outcome_description: str = ""
    patient_id: str | None = None
    studies: tuple[StudyRef, ...] = ()
    resource: str | None = None
    query: tuple[tuple[str, str], ...] | None = None
    alert: AlertType | None = None
    data_flow: DataFlow | None = None

    def __post_init__(self) -> None:
        if self.when.utcoffset() != timedelta(0):
            raise ValueError("an audit record's time must be timezone-aware UTC (PS3.15 A.5.2.5)")
        if self.action not in _ACTIONS[self.kind]:
            raise ValueError(f"{self.kind.name} does not take action {self.action.value} (PS3.15 A.5.3)")
        if self.kind in _NEEDS_PATIENT and self.patient_id is None:
            raise ValueError(f"{self.kind.name} names exactly one patient (PS3.15 A.5.3)")
        if self.kind in _NEEDS_STUDY and not self.studies:
            raise ValueError(f"{self.kind.name} names at least one study (PS3.15 A.5.3)")
        if (self.kind in _TRANSFERS) != (self.data_flow is not None):
            raise ValueError("data_flow is given exactly for the transfers")
        if (self.kind is EventKind.SECURITY_ALERT) != (self.alert is not None):
            raise ValueError("alert is given exactly for a SECURITY_ALERT")
        if (self.kind is EventKind.QUERY) != (self.query is not None):
            raise ValueError("query is given exactly for a QUERY")
        if self.kind in (EventKind.QUERY, EventKind.SECURITY_ALERT) and self.resource is None:
            raise ValueError(f"{self.kind.name} needs the resource (its query object or alert subject)")

    def to_json(self) -> str:
        return json.dumps({
            "format": _FORMAT,
            "kind": self.kind.name,
            "action": self.action.value,
            "outcome": int(self.outcome),
            "when": self.when.isoformat(timespec="microseconds"),
            "request_id": self.request_id,
            "actor": {"subject": self.actor.subject, "roles": list(self.actor.roles), "issuer": self.actor.issuer,
                      "address": self.actor.address, "is_requestor": self.actor.is_requestor},
            "peer": {"user_id": self.peer.user_id, "address": self.peer.address},
            "outcome_description": self.outcome_description,
            "patient_id": self.patient_id,
            "studies": [{"study_uid": study.study_uid, "series_uids": list(study.series_uids),
                         "instances": [[i.sop_instance_uid, i.sop_class_uid] for i in study.instances]}
                        for study in self.studies],
            "resource": self.resource,
            "query": None if self.query is None else [list(pair) for pair in self.query],
            "alert": None if self.alert is None else self.alert.name,
            "data_flow": None if self.data_flow is None else self.data_flow.value,
        }, ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AuditRecord:
        """The record `to_json` wrote; `ValueError` for anything else."""
        try:
            data = _Fields(json.loads(text))
            if data.integer("format") != _FORMAT:
                raise ValueError("unknown audit record format")
            actor, peer = data.nested("actor"), data.nested("peer")
            query = data.optional_items("query")
            alert, data_flow = data.optional_text("alert"), data.optional_text("data_flow")
            return cls(
                kind=EventKind[data.text("kind")],
                action=Action(data.text("action")),
                outcome=Outcome(data.integer("outcome")),
                when=datetime.fromisoformat(data.text("when")),
                request_id=data.text("request_id"),
                actor=Actor(subject=actor.text("subject"), roles=tuple(_str(r) for r in actor.items("roles")),
                            issuer=actor.optional_text("issuer"), address=actor.optional_text("address"),
                            is_requestor=actor.boolean("is_requestor")),
                peer=Peer(user_id=peer.text("user_id"), address=peer.optional_text("address")),
                outcome_description=data.text("outcome_description"),
                patient_id=data.optional_text("patient_id"),
                studies=tuple(_study(_Fields(s)) for s in data.items("studies")),
                resource=data.optional_text("resource"),
                query=None if query is None else tuple(_pair(p) for p in query),
                alert=None if alert is None else AlertType[alert],
                data_flow=None if data_flow is None else DataFlow(data_flow),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an audit record: {exc!r}") from exc


_FORMAT = 1


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _pair(value: object) -> tuple[str, str]:
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError("expected a pair")
    return _str(value[0]), _str(value[1])


def _study(data: _Fields) -> StudyRef:
    instances = []
    for item in data.items("instances"):
        if not isinstance(item, list) or len(item) != 2:
            raise TypeError("expected [instance UID, SOP Class UID or null]")
        instances.append(InstanceRef(_str(item[0]), None if item[1] is None else _str(item[1])))
    return StudyRef(study_uid=data.text("study_uid"), series_uids=tuple(_str(u) for u in data.items("series_uids")),
                    instances=tuple(instances))


class _Fields:
    """A JSON object's fields, each read as the type it must have (`TypeError` otherwise)."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise TypeError("expected an object")
        self._data: dict[str, object] = data

    def text(self, key: str) -> str:
        return _str(self._data[key])

    def optional_text(self, key: str) -> str | None:
        value = self._data[key]
        return None if value is None else _str(value)

    def integer(self, key: str) -> int:
        value = self._data[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{key}: expected an integer")
        return value

    def boolean(self, key: str) -> bool:
        value = self._data[key]
        if not isinstance(value, bool):
            raise TypeError(f"{key}: expected true or false")
        return value

    def items(self, key: str) -> list[object]:
        value = self._data[key]
        if not isinstance(value, list):
            raise TypeError(f"{key}: expected a list")
        return value

    def optional_items(self, key: str) -> list[object] | None:
        return None if self._data[key] is None else self.items(key)

    def nested(self, key: str) -> _Fields:
        return _Fields(self._data[key])
