"""An audit record as the DICOM PS3.15 A.5.1 XML `AuditMessage`: `to_xml(record, source_id) -> bytes`.

The message follows the A.5.1.1 schema (`schema/audit-message.rnc`, the standard's RELAX NG text): elements in the
schema's order (EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*;
inside each, the children in the order the schema's groups give), coded values as `csd-code`, `codeSystemName`,
`originalText` (the schema's `CodedValueType`), and the A.5.3 specialisations of each message (see
`gateway.audit.records` for which message each gateway event is, and why). The output is UTF-8, with an XML
declaration, and deterministic: the same record gives the same bytes (attributes in a fixed order, objects in the
record's order, no generated ids or clocks).

What the schema asks that a record does not carry:
- ParticipantObjectName or ParticipantObjectQuery is required in every participant object (the schema's choice has
  no `?`). A query object has its query; the other objects get an empty ParticipantObjectName: the gateway knows
  no patient names, and the A.5.3 tables leave the name "not specialized" for studies.
- SOPClass requires NumberOfInstances: it is the number of the record's instances of that SOP Class; instances
  whose SOP Class is unknown share one SOPClass element without a UID (the schema makes the UID optional).

Hostile values. Escaping is ElementTree's (the markup is ElementTree's serialisation of the same elements, written
directly as text): `<`, `>`, `&` and `"` become entity references, and tab, newline and
carriage return in attribute values become character references, so that attribute-value normalisation does not
turn them into spaces. XML 1.0 cannot carry the other control characters (nor NUL, lone surrogates, U+FFFE/U+FFFF)
at all, not even as character references (XML 1.0 §2.2, production Char): each is written as U+FFFD. Because that
loses evidence, a participant object whose ID was changed that way, or whose ID an `xsd:token` reader would
normalise (leading, trailing or repeated spaces, tabs, newlines), also carries its exact value as a
ParticipantObjectDetail "ExactParticipantObjectID": base64 of its UTF-8 bytes, the schema's own device for "text
contents that contain XML fragments", "nulls" and other "known attack points" (the A.5.1.1 comment on ValuePair).
The record in the store keeps every value exactly. A carriage return in the outcome description reads back as a
line feed (XML end-of-line handling, §2.11).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterator
from datetime import UTC
from functools import lru_cache
from urllib.parse import quote, urlencode

from gateway.audit.records import (
    AuditRecord,
    Code,
    DataFlow,
    EventKind,
    InstanceRef,
    StudyRef,
)

_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# PS3.16 CID 402 "Audit Active Participant Role ID Code"; RFC 3881 / A.5.1.2.4 Participant Object ID Type Codes.
_SOURCE_ROLE = Code("110153", "DCM", "Source Role ID")
_DESTINATION_ROLE = Code("110152", "DCM", "Destination Role ID")
_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
_URI = Code("12", "RFC-3881", "URI")
_STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
# The gateway's roles (`auth.callers.Role`) as RoleIDCode values of its own code system.
_ROLE_SYSTEM = "dicom-gateway"
# A.5.1.2.1 Audit Source Type Code 4: "Application server process tier in a multi-tier system".
_APPLICATION_SERVER = "4"

# A.5.1.2.2 / A.5.2.6 and A.5.1 ParticipantObjectTypeCode values the messages use.
_PERSON, _SYSTEM_OBJECT = "1", "2"
_ROLE_PATIENT, _ROLE_REPORT = "1", "3"

# Characters outside XML 1.0's Char production (§2.2): C0 controls but tab/LF/CR, surrogates, U+FFFE, U+FFFF.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_XSD_TOKEN_SPACE = re.compile("[\t\n\r ]+")


def to_xml(record: AuditRecord, source_id: str) -> bytes:
    """The PS3.15 A.5.1 AuditMessage of `record`, reported by the audit source `source_id` (AuditSourceID)."""
    source = _element("AuditSourceIdentification", _attributes(("AuditSourceID", source_id)),
                      _element("AuditSourceTypeCode", _attributes(("csd-code", _APPLICATION_SERVER))))
    body = (_event_identification(record) + _active_participants(record) + source
            + "".join(_participant_objects(record)))
    return _DECLARATION + _element("AuditMessage", "", body).encode("utf-8")


# The markup is written as text, in ElementTree's serialisation (`ET.tostring(..., encoding="unicode")`) of the
# same elements: `<tag a="v">children</tag>`, or `<tag a="v" />` when empty; its escapes (below). Building
# ElementTree elements and serialising them took twice as long, and the shipper renders every record it sends.
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;", "\t": "&#09;"}
_ATTRIBUTE_ESCAPES = re.compile('[&<>"\r\n\t]')
_TEXT_ESCAPES = re.compile("[&<>]")


def _escape(found: re.Match[str]) -> str:
    return _ESCAPES[found.group()]


# A value with none of these is written as it is: no XML-invalid character (`_text`), nothing to escape.
_PLAIN_ATTRIBUTE = re.compile('[^\x20-\x21\x23-\x25\x27-\x3b\x3d\x3f-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')


def _attributes(*pairs: tuple[str, str]) -> str:
    """The attributes, each value `_text`-ed and escaped (most values need neither: one scan tells)."""
    out = ""
    for name, value in pairs:
        if _PLAIN_ATTRIBUTE.search(value) is not None:
            value = _ATTRIBUTE_ESCAPES.sub(_escape, _text(value))
        out += f' {name}="{value}"'
    return out


def _element(tag: str, attributes: str, children: str = "") -> str:
    return f"<{tag}{attributes}>{children}</{tag}>" if children else f"<{tag}{attributes} />"


def _text_element(tag: str, text: str) -> str:
    """An element holding `text` (already `_text`): open and close tags even when it is empty."""
    return f"<{tag}>{_TEXT_ESCAPES.sub(_escape, text)}</{tag}>"


def _event_identification(record: AuditRecord) -> str:
    attributes = _attributes(("EventActionCode", record.action.value), ("EventDateTime", _date_time(record)),
                             ("EventOutcomeIndicator", str(record.outcome.value)))
    children = _coded("EventID", record.kind.event_id)
    if record.alert is not None:  # A.5.3.11: EventTypeCode M, from CID 403
        children += _coded("EventTypeCode", record.alert.type_code)
    if record.outcome_description:
        children += _text_element("EventOutcomeDescription", _text(record.outcome_description))
    return _element("EventIdentification", attributes, children)


def _date_time(record: AuditRecord) -> str:
    # xsd:dateTime with the time zone, which A.5.2.5 requires; "Z" for UTC.
    return record.when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _active_participants(record: AuditRecord) -> str:
    actor, peer = record.actor, record.peer
    actor_role, peer_role = _transfer_roles(record)
    # A.5.3.11: the performing persons of a Security Alert "Shall be FALSE" for UserIsRequestor; the gateway is
    # never the requestor here (A.5.2: when in doubt, FALSE; never two requestors).
    requestor = actor.is_requestor and record.kind is not EventKind.SECURITY_ALERT
    attributes = [("UserID", actor.subject)]
    if actor.issuer is not None:
        # A.5.2.2: the identifier "used for that person within an enterprise for authentication purposes", like a
        # Kerberos user@realm: the token's subject at its issuer.
        attributes.append(("AlternativeUserID", f"{actor.subject}@{actor.issuer}"))
    attributes.append(("UserIsRequestor", _boolean(requestor)))
    attributes += _network_access_point(actor.address)
    roles = _coded("RoleIDCode", actor_role) if actor_role is not None else ""
    roles += "".join(_coded("RoleIDCode", Code(role, _ROLE_SYSTEM, role)) for role in actor.roles)
    actor_element = _element("ActiveParticipant", _attributes(*attributes), roles)

    peer_attributes = _attributes(("UserID", peer.user_id), ("UserIsRequestor", _boolean(False)),
                                  *_network_access_point(peer.address))
    peer_element = _element("ActiveParticipant", peer_attributes,
                            _coded("RoleIDCode", peer_role) if peer_role is not None else "")
    return actor_element + peer_element


def _transfer_roles(record: AuditRecord) -> tuple[Code | None, Code | None]:
    """The RoleIDCodes A.5.3 makes mandatory: (actor's, peer's)."""
    if record.kind is EventKind.QUERY:  # A.5.3.10: the process issuing the query, the one responding to it
        return _SOURCE_ROLE, _DESTINATION_ROLE
    if record.data_flow is DataFlow.FROM_ACTOR:  # A.5.3.3, A.5.3.7: the process sending, the process receiving
        return _SOURCE_ROLE, _DESTINATION_ROLE
    if record.data_flow is DataFlow.TO_ACTOR:
        return _DESTINATION_ROLE, _SOURCE_ROLE
    return None, None


@lru_cache(maxsize=1024)  # the clients' addresses: parsing one as an IP address took a fifth of the message
def _network_access_point(address: str | None) -> tuple[tuple[str, str], ...]:
    if address is None:
        return ()
    try:
        ipaddress.ip_address(address)
    except ValueError:
        kind = "1"  # machine name, including DNS name
    else:
        kind = "2"  # IP address
    return ("NetworkAccessPointID", address), ("NetworkAccessPointTypeCode", kind)


def _participant_objects(record: AuditRecord) -> Iterator[str]:
    alert = record.kind is EventKind.SECURITY_ALERT
    if record.resource is not None and record.query is not None:
        yield _query_object(record, record.resource, record.query)
    elif record.resource is not None and alert:
        yield _alert_subject(record, record.resource)
    for study in record.studies:
        yield _study_object(record, study, alert)
    if record.patient_id is not None:
        yield _patient_object(record, record.patient_id)


_NAME = "<ParticipantObjectName />"  # required (the schema's choice with the query), empty: no names known


def _query_object(record: AuditRecord, resource: str, query: tuple[tuple[str, str], ...]) -> str:
    """A.5.3.10 "SOP Queried and the Query", for a non-DICOM (QIDO-RS) query: its URI and its parameters."""
    parameters = urlencode(query, quote_via=quote, safe="", encoding="utf-8", errors="surrogatepass")
    return _object(resource, _SYSTEM_OBJECT, _ROLE_REPORT, _URI,
                   _text_element("ParticipantObjectQuery", _base64(parameters)) + _details(record, resource))


def _alert_subject(record: AuditRecord, resource: str) -> str:
    """A.5.3.11 "Alert Subject": system object, ID type URI, with the mandatory "Alert Description" detail."""
    return _object(resource, _SYSTEM_OBJECT, None, _URI,
                   _NAME + _alert_description(record) + _details(record, resource))


def _study_object(record: AuditRecord, study: StudyRef, alert: bool) -> str:
    """A.5.3 "Studies": system object, role report, ID type (110180, DCM, "Study Instance UID")."""
    children = _NAME + (_alert_description(record) if alert else "") + _details(record, study.study_uid)
    children += "".join(_detail("SeriesInstanceUID", series_uid) for series_uid in study.series_uids)
    if study.instances:
        # A.5.2 SOPClass (MC): required once the object carries instances or their count.
        classes = ""
        for sop_class_uid, instances in _by_sop_class(study.instances):
            uid = (("UID", sop_class_uid),) if sop_class_uid is not None else ()
            classes += _element("SOPClass", _attributes(*uid, ("NumberOfInstances", str(len(instances)))),
                                "".join(_element("Instance", _attributes(("UID", i.sop_instance_uid)))
                                        for i in instances))
        children += _element("ParticipantObjectDescription", "", classes)
    return _object(study.study_uid, _SYSTEM_OBJECT, _ROLE_REPORT, _STUDY_INSTANCE_UID, children)


def _patient_object(record: AuditRecord, patient_id: str) -> str:
    """A.5.3 "Patient (1)": person, role patient, ID type (2, RFC-3881, "Patient Number"), ID the PatientID."""
    return _object(patient_id, _PERSON, _ROLE_PATIENT, _PATIENT_NUMBER, _NAME + _details(record, patient_id))


def _object(object_id: str, type_code: str, role: str | None, id_type: Code, children: str) -> str:
    attributes = [("ParticipantObjectID", object_id), ("ParticipantObjectTypeCode", type_code)]
    if role is not None:
        attributes.append(("ParticipantObjectTypeCodeRole", role))
    return _element("ParticipantObjectIdentification", _attributes(*attributes),
                    _coded("ParticipantObjectIDTypeCode", id_type) + children)


def _details(record: AuditRecord, object_id: str) -> str:
    exact = ""
    if _text(object_id) != object_id or _XSD_TOKEN_SPACE.sub(" ", object_id).strip(" ") != object_id:
        exact = _detail("ExactParticipantObjectID", object_id)
    return exact + _detail("RequestID", record.request_id)


def _alert_description(record: AuditRecord) -> str:
    # A.5.3.11: "a free text description of the nature of the alert"; the alert type's meaning when none was given.
    nature = record.outcome_description or (record.alert.type_code.meaning if record.alert is not None else "")
    return _detail("Alert Description", nature)


def _detail(kind: str, value: str) -> str:
    return _element("ParticipantObjectDetail", _attributes(("type", kind), ("value", _base64(value))))


def _by_sop_class(instances: tuple[InstanceRef, ...]) -> list[tuple[str | None, list[InstanceRef]]]:
    groups: dict[str | None, list[InstanceRef]] = {}
    for instance in instances:  # in the record's order: the first instance of a class places its group
        groups.setdefault(instance.sop_class_uid, []).append(instance)
    return list(groups.items())


@lru_cache(maxsize=256)  # the codes are the module's constants and the roles of the tokens seen: a few dozen
def _coded(tag: str, code: Code) -> str:
    return _element(tag, _attributes(("csd-code", code.code), ("codeSystemName", code.system),
                                     ("originalText", code.meaning)))


def _boolean(value: bool) -> str:
    return "true" if value else "false"


def _base64(value: str) -> str:
    # surrogatepass: a lone surrogate (a byte that was not UTF-8, through surrogateescape) is kept, not refused.
    return base64.b64encode(value.encode("utf-8", errors="surrogatepass")).decode("ascii")


def _text(value: str) -> str:
    """`value` with each character XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML_CHAR.sub("\ufffd", value)

