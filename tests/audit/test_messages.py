"""Unit tests of `gateway.audit.messages.to_xml`: each event kind as its PS3.15 A.5.3 message, checked against the
content model of the A.5.1.1 schema, and hostile values.

The venv has no lxml (nor any RELAX NG validator), so the schema is checked by `_check`, a transcription of the
A.5.1.1 content model (`gateway/audit/schema/audit-message.rnc`): for each element, its attributes (required or not,
enumerated values, lexical type) and its children in the order of the schema's groups, with their cardinalities;
any attribute or element the schema does not name fails. `test_the_content_model_names_only_the_schemas_names`
ties the transcription to the committed schema text.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from gateway.audit.messages import to_xml
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

SCHEMA = Path(__file__).resolve().parents[2] / "gateway" / "audit" / "schema" / "audit-message.rnc"
SOURCE_ID = "dicom-gateway@gw1.example.org"
WHEN = datetime(2026, 12, 1, 14, 30, 5, 123456, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"

# --- the A.5.1.1 content model ----------------------------------------------------------------------------------

Check = Callable[[str], bool]


def _enum(*values: str) -> Check:
    return lambda value: value in values


def _any(value: str) -> bool:
    return True


def _boolean(value: str) -> bool:
    return value in ("true", "false", "1", "0")


def _integer(value: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", value) is not None


def _base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


def _date_time(value: str) -> bool:
    # xsd:dateTime, and A.5.2.5: "shall include the time zone information".
    return re.fullmatch(r"-?\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value) is not None


# Attributes: name -> (required, check). Children: ordered groups of (names, min, max), max None for unbounded.
# Text: whether the element may hold text, and its check.
Attributes = dict[str, tuple[bool, Check]]
Groups = list[tuple[tuple[str, ...], int, int | None]]
Model = tuple[Attributes, Groups, Check | None]
CODED: Model = ({"csd-code": (True, _any), "codeSystemName": (True, _any), "displayName": (False, _any),
          "originalText": (True, _any)}, [], None)
MODEL: dict[str, Model] = {
    "AuditMessage": ({}, [
        (("EventIdentification",), 1, 1), (("ActiveParticipant",), 1, None),
        (("AuditSourceIdentification",), 1, 1), (("ParticipantObjectIdentification",), 0, None),
    ], None),
    "EventIdentification": ({
        "EventActionCode": (False, _enum("C", "R", "U", "D", "E")),
        "EventDateTime": (True, _date_time),
        "EventOutcomeIndicator": (True, _enum("0", "4", "8", "12")),
    }, [(("EventID",), 1, 1), (("EventTypeCode",), 0, None), (("EventOutcomeDescription",), 0, 1)], None),
    "EventID": CODED,
    "EventTypeCode": CODED,
    "EventOutcomeDescription": ({}, [], _any),
    "AuditSourceIdentification": ({"AuditEnterpriseSiteID": (False, _any), "AuditSourceID": (True, _any)},
                                  [(("AuditSourceTypeCode",), 0, None)], None),
    # other-csd-attributes? : checked in _check (codeSystemName and originalText together, or neither)
    "AuditSourceTypeCode": ({"csd-code": (True, _any), "codeSystemName": (False, _any),
                             "displayName": (False, _any), "originalText": (False, _any)}, [], None),
    "ActiveParticipant": ({
        "UserID": (True, _any), "AlternativeUserID": (False, _any), "UserName": (False, _any),
        "UserIsRequestor": (True, _boolean), "NetworkAccessPointID": (False, _any),
        "NetworkAccessPointTypeCode": (False, _enum("1", "2", "3", "4", "5")),
    }, [(("RoleIDCode",), 0, None), (("MediaIdentifier",), 0, 1)], None),
    "RoleIDCode": CODED,
    "MediaIdentifier": ({}, [(("MediaType",), 1, 1)], None),
    "MediaType": CODED,
    "ParticipantObjectIdentification": ({
        "ParticipantObjectID": (True, _any),
        "ParticipantObjectTypeCode": (False, _enum("1", "2", "3", "4")),
        "ParticipantObjectTypeCodeRole": (False, _enum(*(str(n) for n in range(1, 27)))),
        "ParticipantObjectDataLifeCycle": (False, _enum(*(str(n) for n in range(1, 16)))),
        "ParticipantObjectSensitivity": (False, _any),
    }, [
        (("ParticipantObjectIDTypeCode",), 1, 1),
        (("ParticipantObjectName", "ParticipantObjectQuery"), 1, 1),  # a choice, without "?" in A.5.1.1
        (("ParticipantObjectDetail",), 0, None), (("ParticipantObjectDescription",), 0, None),
    ], None),
    "ParticipantObjectIDTypeCode": CODED,
    "ParticipantObjectName": ({}, [], _any),
    "ParticipantObjectQuery": ({}, [], _base64),
    "ParticipantObjectDetail": ({"type": (True, _any), "value": (True, _base64)}, [], None),
    "ParticipantObjectDescription": ({}, [
        (("MPPS",), 0, None), (("Accession",), 0, None), (("SOPClass",), 0, None),
        (("ParticipantObjectContainsStudy",), 0, 1), (("Encrypted",), 0, 1), (("Anonymized",), 0, 1),
    ], None),
    "MPPS": ({"UID": (True, _any)}, [], None),
    "Accession": ({"Number": (True, _any)}, [], None),
    "SOPClass": ({"UID": (False, _any), "NumberOfInstances": (True, _integer)}, [(("Instance",), 0, None)], None),
    "Instance": ({"UID": (True, _any)}, [], None),
    "ParticipantObjectContainsStudy": ({}, [(("StudyIDs",), 0, None)], None),
    "StudyIDs": ({"UID": (True, _any)}, [], None),
    "Encrypted": ({}, [], _boolean),
    "Anonymized": ({}, [], _boolean),
}


def _check(element: ET.Element, path: str = "") -> None:
    path = f"{path}/{element.tag}"
    assert element.tag in MODEL, f"{path}: not an element of the schema"
    attributes, groups, text = MODEL[element.tag]
    for name, value in element.attrib.items():
        assert name in attributes, f"{path}/@{name}: not an attribute of this element"
        assert attributes[name][1](value), f"{path}/@{name}: {value!r} is not a valid value"
    for name, (required, _) in attributes.items():
        assert not required or name in element.attrib, f"{path}/@{name}: required"
    if element.tag == "AuditSourceTypeCode" and len(element.attrib) > 1:
        assert {"codeSystemName", "originalText"} <= element.attrib.keys(), f"{path}: other-csd-attributes"
    content = (element.text or "").strip()
    if text is None:
        assert not content, f"{path}: no text allowed"
    else:
        assert text(content), f"{path}: {content!r} is not a valid value"
    children = list(element)
    at = 0
    for names, least, most in groups:
        count = 0
        while at < len(children) and children[at].tag in names:
            assert not (children[at].tail or "").strip(), f"{path}: no text allowed"
            count, at = count + 1, at + 1
        assert count >= least, f"{path}: {'|'.join(names)} at least {least}, got {count}"
        assert most is None or count <= most, f"{path}: {'|'.join(names)} at most {most}, got {count}"
    assert at == len(children), f"{path}: {children[at].tag if at < len(children) else ''} out of place"
    for child in children:
        _check(child, path)


def _message(record: AuditRecord) -> ET.Element:
    data = to_xml(record, SOURCE_ID)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(data)  # noqa: S314 -- the gateway's own output, not untrusted XML
    _check(root)
    return root


def test_the_content_model_names_only_the_schemas_names() -> None:
    schema = SCHEMA.read_text(encoding="utf-8")
    assert "start = message" in schema
    for tag, (attributes, _, _) in MODEL.items():
        assert f"element {tag} " in schema, tag
        for name in attributes:
            assert f"attribute {name} " in schema, (tag, name)


def _at(root: ET.Element, path: str) -> ET.Element:
    element = root.find(path)
    assert element is not None
    return element


def _without_name(root: ET.Element) -> None:
    for parent in root.iter("ParticipantObjectIdentification"):
        for name in parent.findall("ParticipantObjectName"):
            parent.remove(name)


def _source_first(root: ET.Element) -> None:
    source = root.find("AuditSourceIdentification")
    assert source is not None
    root.remove(source)
    root.insert(0, source)


def _detail_before_id_type(root: ET.Element) -> None:
    patient = root.find("ParticipantObjectIdentification")
    assert patient is not None
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None
    patient.remove(id_type)
    patient.append(id_type)


@pytest.mark.parametrize("damage", [
    _without_name,  # the Name|Query choice is required
    _source_first,  # AuditMessage's order
    _detail_before_id_type,  # ParticipantObjectIdentification's order
    lambda root: _at(root, "EventIdentification/EventID").attrib.pop("originalText"),
    lambda root: _at(root, "EventIdentification").set("EventOutcomeIndicator", "2"),
    lambda root: _at(root, "ActiveParticipant").set("UserIsRequestor", "yes"),
    lambda root: _at(root, "ActiveParticipant").set("Role", "x"),  # an attribute the schema does not name
    lambda root: ET.SubElement(root, "Extra"),  # an element the schema does not name
    lambda root: [root.remove(p) for p in root.findall("ActiveParticipant")],  # one or more
    lambda root: _at(root, "ParticipantObjectIdentification/ParticipantObjectDetail").set("value", "not base64!"),
])
def test_the_content_model_check_refuses_a_damaged_message(damage: Callable[[ET.Element], object]) -> None:
    root = ET.fromstring(to_xml(_record(), SOURCE_ID))  # noqa: S314 -- the gateway's own output
    _check(root)
    damage(root)
    with pytest.raises(AssertionError):
        _check(root)


# --- records ----------------------------------------------------------------------------------------------------

PATIENT_ACTOR = Actor(subject="alice", roles=("patient",), issuer="https://idp.example.org", address="203.0.113.7")
GATEWAY = Peer(user_id="dicom-gateway", address="gw1.example.org")


def _record(**changes: object) -> AuditRecord:
    base = AuditRecord(
        kind=EventKind.INSTANCES_ACCESSED, action=Action.READ, outcome=Outcome.SUCCESS, when=WHEN,
        request_id="req-1", actor=PATIENT_ACTOR, peer=GATEWAY, patient_id="PAT-1",
        studies=(StudyRef(STUDY),),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _code(element: ET.Element | None) -> tuple[str, str, str]:
    assert element is not None
    return element.get("csd-code", ""), element.get("codeSystemName", ""), element.get("originalText", "")


def _objects(root: ET.Element, id_type: str) -> list[ET.Element]:
    return [o for o in root.iter("ParticipantObjectIdentification")
            if _code(o.find("ParticipantObjectIDTypeCode"))[0] == id_type]


def _details(element: ET.Element) -> dict[str, str]:
    return {d.get("type", ""): base64.b64decode(d.get("value", "")).decode("utf-8", "surrogatepass")
            for d in element.iter("ParticipantObjectDetail")}


def _participants(root: ET.Element) -> tuple[ET.Element, ET.Element]:
    actor, peer = root.findall("ActiveParticipant")
    return actor, peer


def _roles(participant: ET.Element) -> list[tuple[str, str, str]]:
    return [_code(role) for role in participant.findall("RoleIDCode")]


def _assert_patient(root: ET.Element, patient_id: str = "PAT-1") -> None:
    (patient,) = _objects(root, "2")
    assert patient.attrib["ParticipantObjectID"] == patient_id
    assert patient.attrib["ParticipantObjectTypeCode"] == "1"  # person
    assert patient.attrib["ParticipantObjectTypeCodeRole"] == "1"  # patient
    assert _code(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")


def _assert_study(root: ET.Element, study_uid: str = STUDY) -> ET.Element:
    studies = [s for s in _objects(root, "110180") if s.attrib["ParticipantObjectID"] == study_uid]
    assert len(studies) == 1
    (study,) = studies
    assert study.attrib["ParticipantObjectTypeCode"] == "2"  # system object
    assert study.attrib["ParticipantObjectTypeCodeRole"] == "3"  # report
    assert _code(study.find("ParticipantObjectIDTypeCode")) == ("110180", "DCM", "Study Instance UID")
    return study


def _event(root: ET.Element) -> ET.Element:
    event = root.find("EventIdentification")
    assert event is not None
    return event


# --- one test per event kind ------------------------------------------------------------------------------------

def test_a_search_is_a_query_with_its_parameters_base64() -> None:
    params = (("PatientId", "PAT-1"), ("StudyDate", "20260101-"), ("includefield", "00081030"))
    root = _message(_record(kind=EventKind.QUERY, action=Action.EXECUTE, studies=(),
                            resource="/exams/studies", query=params))
    event = _event(root)
    assert _code(event.find("EventID")) == ("110112", "DCM", "Query")
    assert event.attrib["EventActionCode"] == "E"
    assert event.attrib["EventOutcomeIndicator"] == "0"
    assert event.attrib["EventDateTime"] == "2026-12-01T14:30:05.123456Z"
    actor, peer = _participants(root)
    assert ("110153", "DCM", "Source Role ID") in _roles(actor)  # the process issuing the query
    assert _roles(peer) == [("110152", "DCM", "Destination Role ID")]  # the one responding to it
    (query,) = _objects(root, "12")
    assert query.attrib["ParticipantObjectID"] == "/exams/studies"
    assert (query.attrib["ParticipantObjectTypeCode"], query.attrib["ParticipantObjectTypeCodeRole"]) == ("2", "3")
    encoded = query.findtext("ParticipantObjectQuery")
    assert encoded is not None
    assert tuple(parse_qsl(base64.b64decode(encoded).decode("ascii"))) == params
    assert _details(query)["RequestID"] == "req-1"
    _assert_patient(root)


def test_a_thumbnail_is_instances_accessed() -> None:
    root = _message(_record(studies=(StudyRef(STUDY, series_uids=(SERIES,)),)))
    event = _event(root)
    assert _code(event.find("EventID")) == ("110103", "DCM", "DICOM Instances Accessed")
    assert event.attrib["EventActionCode"] == "R"
    study = _assert_study(root)
    assert study.find("ParticipantObjectName") is not None  # the schema's choice: a name or a query
    assert _details(study) == {"RequestID": "req-1", "SeriesInstanceUID": SERIES}
    _assert_patient(root)
    actor, peer = _participants(root)
    assert actor.attrib["UserID"] == "alice"
    assert actor.attrib["AlternativeUserID"] == "alice@https://idp.example.org"
    assert actor.attrib["UserIsRequestor"] == "true"
    assert (actor.attrib["NetworkAccessPointID"], actor.attrib["NetworkAccessPointTypeCode"]) == ("203.0.113.7", "2")
    assert _roles(actor) == [("patient", "dicom-gateway", "patient")]
    assert peer.attrib["UserID"] == "dicom-gateway"
    assert peer.attrib["UserIsRequestor"] == "false"
    assert (peer.attrib["NetworkAccessPointID"], peer.attrib["NetworkAccessPointTypeCode"]) == ("gw1.example.org", "1")


def test_a_download_is_instances_transferred_to_the_actor_with_its_instances_by_sop_class() -> None:
    instances = (InstanceRef("1.2.3.1", CT), InstanceRef("1.2.3.2"), InstanceRef("1.2.3.3", CT))
    root = _message(_record(kind=EventKind.INSTANCES_TRANSFERRED, data_flow=DataFlow.TO_ACTOR,
                            studies=(StudyRef(STUDY, instances=instances), StudyRef("1.2.3.9"))))
    assert _code(_event(root).find("EventID")) == ("110104", "DCM", "DICOM Instances Transferred")
    assert _event(root).attrib["EventActionCode"] == "R"
    actor, peer = _participants(root)
    assert ("110152", "DCM", "Destination Role ID") in _roles(actor)
    assert _roles(peer) == [("110153", "DCM", "Source Role ID")]
    study = _assert_study(root)
    sop_classes = study.findall("ParticipantObjectDescription/SOPClass")
    assert [(c.get("UID"), c.get("NumberOfInstances"), [i.get("UID") for i in c]) for c in sop_classes] == [
        (CT, "2", ["1.2.3.1", "1.2.3.3"]), (None, "1", ["1.2.3.2"]),
    ]
    assert _assert_study(root, "1.2.3.9").find("ParticipantObjectDescription") is None
    _assert_patient(root)


def test_an_upload_is_instances_transferred_from_the_actor() -> None:
    root = _message(_record(kind=EventKind.INSTANCES_TRANSFERRED, action=Action.CREATE,
                            data_flow=DataFlow.FROM_ACTOR))
    assert _event(root).attrib["EventActionCode"] == "C"
    actor, peer = _participants(root)
    assert ("110153", "DCM", "Source Role ID") in _roles(actor)
    assert _roles(peer) == [("110152", "DCM", "Destination Role ID")]
    _assert_study(root)
    _assert_patient(root)


def test_a_large_upload_begins_with_begin_transferring() -> None:
    root = _message(_record(kind=EventKind.BEGIN_TRANSFERRING, action=Action.EXECUTE,
                            data_flow=DataFlow.FROM_ACTOR))
    assert _code(_event(root).find("EventID")) == ("110102", "DCM", "Begin Transferring DICOM Instances")
    assert _event(root).attrib["EventActionCode"] == "E"
    actor, peer = _participants(root)
    assert ("110153", "DCM", "Source Role ID") in _roles(actor)
    assert _roles(peer) == [("110152", "DCM", "Destination Role ID")]
    _assert_study(root)
    _assert_patient(root)


@pytest.mark.parametrize("action", [Action.CREATE, Action.READ, Action.UPDATE])
def test_a_worklist_change_or_read_is_an_order_record(action: Action) -> None:
    clinician = Actor(subject="dr.bob", roles=("clinician",), issuer="https://idp.example.org")
    root = _message(_record(kind=EventKind.ORDER_RECORD, action=action, studies=(), actor=clinician))
    assert _code(_event(root).find("EventID")) == ("110109", "DCM", "Order Record")
    assert _event(root).attrib["EventActionCode"] == action.value
    _assert_patient(root)
    actor, _ = _participants(root)
    assert "NetworkAccessPointID" not in actor.attrib  # no address known: neither attribute
    assert "NetworkAccessPointTypeCode" not in actor.attrib


def test_a_new_exam_callback_is_a_procedure_record_with_the_pacs_as_the_actor() -> None:
    pacs = Actor(subject="orthanc", roles=("pacs",), address="10.0.0.5")
    root = _message(_record(kind=EventKind.PROCEDURE_RECORD, action=Action.CREATE, actor=pacs))
    assert _code(_event(root).find("EventID")) == ("110111", "DCM", "Procedure Record")
    assert _event(root).attrib["EventActionCode"] == "C"
    actor, peer = _participants(root)
    assert (actor.attrib["UserID"], actor.attrib["UserIsRequestor"]) == ("orthanc", "true")
    assert "AlternativeUserID" not in actor.attrib  # no issuer
    assert peer.attrib["UserIsRequestor"] == "false"
    _assert_study(root)
    _assert_patient(root)


def test_a_refusal_is_a_security_alert_with_its_subject_and_the_patient() -> None:
    root = _message(_record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE,
        outcome_description="patient PAT-1 named patient PAT-2", patient_id="PAT-2", studies=(),
        resource="/exams/studies?PatientId=PAT-2", alert=AlertType.USE_OF_RESTRICTED_FUNCTION,
    ))
    event = _event(root)
    assert _code(event.find("EventID")) == ("110113", "DCM", "Security Alert")
    assert _code(event.find("EventTypeCode")) == ("110132", "DCM", "Use of Restricted Function")
    assert (event.attrib["EventActionCode"], event.attrib["EventOutcomeIndicator"]) == ("E", "4")
    assert event.findtext("EventOutcomeDescription") == "patient PAT-1 named patient PAT-2"
    actor, peer = _participants(root)
    assert actor.attrib["UserIsRequestor"] == "false"  # A.5.3.11: performing persons "Shall be FALSE"
    assert peer.attrib["UserIsRequestor"] == "false"
    (subject,) = _objects(root, "12")
    assert subject.attrib["ParticipantObjectID"] == "/exams/studies?PatientId=PAT-2"
    assert subject.attrib["ParticipantObjectTypeCode"] == "2"
    assert _details(subject) == {"Alert Description": "patient PAT-1 named patient PAT-2", "RequestID": "req-1"}
    _assert_patient(root, "PAT-2")


def test_a_bad_token_is_a_node_authentication_alert() -> None:
    nobody = Actor(subject="", address="198.51.100.1")
    root = _message(_record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE, actor=nobody,
        patient_id=None, studies=(), resource="/exams/studies", alert=AlertType.NODE_AUTHENTICATION,
    ))
    assert _code(_event(root).find("EventTypeCode")) == ("110126", "DCM", "Node Authentication")
    actor, _ = _participants(root)
    assert actor.attrib["UserID"] == ""
    assert _objects(root, "2") == []  # no patient named
    (subject,) = _objects(root, "12")
    assert _details(subject)["Alert Description"] == "Node Authentication"  # no description: the type's meaning


def test_a_viewer_token_issued_is_an_informative_security_alert_on_its_study() -> None:
    root = _message(_record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.SUCCESS,
        outcome_description="viewer token for one study, 3600 s", resource="/token?StudyInstanceUID=" + STUDY,
        alert=AlertType.OBJECT_SECURITY_ATTRIBUTES_CHANGED,
    ))
    event = _event(root)
    assert _code(event.find("EventTypeCode")) == ("110135", "DCM", "Object Security Attributes Changed")
    assert event.attrib["EventOutcomeIndicator"] == "0"
    study = _assert_study(root)
    assert _details(study)["Alert Description"] == "viewer token for one study, 3600 s"
    _assert_patient(root)


# --- common parts -----------------------------------------------------------------------------------------------

def test_the_audit_source_is_the_setting_and_an_application_server() -> None:
    root = _message(_record())
    source = root.find("AuditSourceIdentification")
    assert source is not None
    assert source.attrib == {"AuditSourceID": SOURCE_ID}
    assert [c.attrib for c in source] == [{"csd-code": "4"}]


@pytest.mark.parametrize("outcome", list(Outcome))
def test_each_outcome_is_its_indicator(outcome: Outcome) -> None:
    root = _message(_record(outcome=outcome, outcome_description="" if outcome is Outcome.SUCCESS else "failed"))
    assert _event(root).attrib["EventOutcomeIndicator"] == str(int(outcome))
    assert (_event(root).find("EventOutcomeDescription") is None) == (outcome is Outcome.SUCCESS)


def test_the_message_is_deterministic() -> None:
    record = _record(studies=(StudyRef(STUDY, (SERIES,), (InstanceRef("1.2.3.1", CT),)),))
    assert to_xml(record, SOURCE_ID) == to_xml(replace(record), SOURCE_ID) == to_xml(_record(
        studies=(StudyRef(STUDY, (SERIES,), (InstanceRef("1.2.3.1", CT),)),)), SOURCE_ID)


def test_the_message_is_exactly_this() -> None:
    record = _record(kind=EventKind.QUERY, action=Action.EXECUTE, studies=(), resource="/exams/studies",
                     query=(("PatientId", "PAT-1"),), when=WHEN.astimezone(timezone(timedelta(0))))
    assert to_xml(record, SOURCE_ID) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<AuditMessage>'
        b'<EventIdentification EventActionCode="E" EventDateTime="2026-12-01T14:30:05.123456Z"'
        b' EventOutcomeIndicator="0">'
        b'<EventID csd-code="110112" codeSystemName="DCM" originalText="Query" />'
        b'</EventIdentification>'
        b'<ActiveParticipant UserID="alice" AlternativeUserID="alice@https://idp.example.org" UserIsRequestor="true"'
        b' NetworkAccessPointID="203.0.113.7" NetworkAccessPointTypeCode="2">'
        b'<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID" />'
        b'<RoleIDCode csd-code="patient" codeSystemName="dicom-gateway" originalText="patient" />'
        b'</ActiveParticipant>'
        b'<ActiveParticipant UserID="dicom-gateway" UserIsRequestor="false" NetworkAccessPointID="gw1.example.org"'
        b' NetworkAccessPointTypeCode="1">'
        b'<RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID" />'
        b'</ActiveParticipant>'
        b'<AuditSourceIdentification AuditSourceID="dicom-gateway@gw1.example.org">'
        b'<AuditSourceTypeCode csd-code="4" />'
        b'</AuditSourceIdentification>'
        b'<ParticipantObjectIdentification ParticipantObjectID="/exams/studies" ParticipantObjectTypeCode="2"'
        b' ParticipantObjectTypeCodeRole="3">'
        b'<ParticipantObjectIDTypeCode csd-code="12" codeSystemName="RFC-3881" originalText="URI" />'
        b'<ParticipantObjectQuery>UGF0aWVudElkPVBBVC0x</ParticipantObjectQuery>'
        b'<ParticipantObjectDetail type="RequestID" value="cmVxLTE=" />'
        b'</ParticipantObjectIdentification>'
        b'<ParticipantObjectIdentification ParticipantObjectID="PAT-1" ParticipantObjectTypeCode="1"'
        b' ParticipantObjectTypeCodeRole="1">'
        b'<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number" />'
        b'<ParticipantObjectName />'
        b'<ParticipantObjectDetail type="RequestID" value="cmVxLTE=" />'
        b'</ParticipantObjectIdentification>'
        b'</AuditMessage>'
    )


# --- hostile values ---------------------------------------------------------------------------------------------

HOSTILE = 'P<1>&"\'\x00\x01\x1b\x7f\t\nZ\ufffe\udc80'


def test_a_hostile_patient_id_is_escaped_and_kept_exactly_in_base64() -> None:
    data = to_xml(_record(patient_id=HOSTILE, outcome_description="</EventOutcomeDescription>&\x00"), SOURCE_ID)
    assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]", data) is None  # no control character XML 1.0 forbids
    data.decode("utf-8")  # valid UTF-8: the lone surrogate was not written
    root = _message(_record(patient_id=HOSTILE, outcome_description="</EventOutcomeDescription>&\x00"))
    (patient,) = _objects(root, "2")
    # <, >, &, quotes escaped and read back; tab and newline kept (character references); the rest U+FFFD.
    assert patient.attrib["ParticipantObjectID"] == 'P<1>&"\'\ufffd\ufffd\ufffd\x7f\t\nZ\ufffd\ufffd'
    assert _details(patient)["ExactParticipantObjectID"] == HOSTILE
    assert _event(root).findtext("EventOutcomeDescription") == "</EventOutcomeDescription>&\ufffd"
    assert b"P&lt;1&gt;&amp;&quot;'" in data
    assert b"&#09;&#10;Z" in data


def test_an_id_that_a_token_reader_would_normalise_is_also_kept_exactly() -> None:
    root = _message(_record(patient_id=" PAT  1 "))
    (patient,) = _objects(root, "2")
    assert patient.attrib["ParticipantObjectID"] == " PAT  1 "
    assert _details(patient)["ExactParticipantObjectID"] == " PAT  1 "


def test_a_plain_id_has_no_exact_copy() -> None:
    (patient,) = _objects(_message(_record(patient_id="Zoë-1")), "2")
    assert patient.attrib["ParticipantObjectID"] == "Zoë-1"
    assert "ExactParticipantObjectID" not in _details(patient)
    assert "Zoë-1".encode() in to_xml(_record(patient_id="Zoë-1"), SOURCE_ID)  # UTF-8, not a character reference


def test_hostile_query_parameters_and_user_ids_stay_out_of_the_markup() -> None:
    params = (("PatientId", "<x>&\x00"), ("\udc80", "é"))
    actor = Actor(subject='"><Evil/>', roles=("pa\x00tient",), issuer="i\x01", address="not an <ip>")
    root = _message(_record(kind=EventKind.QUERY, action=Action.EXECUTE, studies=(), actor=actor,
                            resource="/exams/studies?<", query=params))
    (query,) = _objects(root, "12")
    encoded = query.findtext("ParticipantObjectQuery")
    assert encoded is not None
    raw = base64.b64decode(encoded).decode("ascii")
    assert tuple(parse_qsl(raw, encoding="utf-8", errors="surrogatepass")) == params
    actor_element, _ = _participants(root)
    assert actor_element.attrib["UserID"] == '"><Evil/>'
    assert actor_element.attrib["AlternativeUserID"] == '"><Evil/>@i\ufffd'
    assert actor_element.attrib["NetworkAccessPointTypeCode"] == "1"
    assert _roles(actor_element)[1] == ("pa\ufffdtient", "dicom-gateway", "pa\ufffdtient")
    assert root.find(".//Evil") is None


# --- records that cannot be a valid message ---------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"when": datetime(2026, 12, 1, 14, 30)},  # naive
    {"when": datetime(2026, 12, 1, 14, 30, tzinfo=timezone(timedelta(hours=1)))},  # not UTC
    {"action": Action.EXECUTE},  # Instances Accessed is C/R/U/D
    {"patient_id": None},  # A.5.3.6: Patient (1)
    {"studies": ()},  # A.5.3.6: Studies (1..N)
    {"data_flow": DataFlow.TO_ACTOR},  # only for transfers
    {"alert": AlertType.NODE_AUTHENTICATION},  # only for Security Alert
    {"query": ()},  # only for Query
    {"kind": EventKind.INSTANCES_TRANSFERRED},  # a transfer without its data flow
    {"kind": EventKind.SECURITY_ALERT, "action": Action.EXECUTE, "alert": AlertType.NODE_AUTHENTICATION},  # resource
    {"kind": EventKind.QUERY, "action": Action.EXECUTE, "query": ()},  # a query without its resource
    {"kind": EventKind.BEGIN_TRANSFERRING, "data_flow": DataFlow.FROM_ACTOR},  # Begin Transferring is E
])
def test_a_record_that_cannot_be_its_message_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        _record(**changes)


# --- the stored form --------------------------------------------------------------------------------------------

def test_a_record_survives_its_json_exactly() -> None:
    record = _record(
        kind=EventKind.QUERY, action=Action.EXECUTE, outcome=Outcome.SERIOUS_FAILURE, outcome_description=HOSTILE,
        patient_id=HOSTILE, studies=(StudyRef(STUDY, (SERIES,), (InstanceRef("1.2.3.1", CT), InstanceRef("1.2"))),),
        resource="/dicomweb/studies?" + HOSTILE, query=((HOSTILE, "é"), ("limit", "10")),
        actor=Actor(subject=HOSTILE, roles=("patient", "viewer"), issuer=None, address=None, is_requestor=False),
    )
    text = record.to_json()
    assert text.isascii()  # NUL and lone surrogates are escapes: safe in a PostgreSQL text column
    assert AuditRecord.from_json(text) == record
    assert to_xml(AuditRecord.from_json(text), SOURCE_ID) == to_xml(record, SOURCE_ID)
    alert = _record(kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, alert=AlertType.NODE_AUTHENTICATION,
                    resource="/token", data_flow=None)
    transfer = _record(kind=EventKind.INSTANCES_TRANSFERRED, data_flow=DataFlow.TO_ACTOR)
    for other in (alert, transfer):
        assert AuditRecord.from_json(other.to_json()) == other


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"format": 2}',
    _record().to_json().replace('"outcome":0', '"outcome":3'),
    _record().to_json().replace('"outcome":0', '"outcome":true'),
    _record().to_json().replace('"kind":"INSTANCES_ACCESSED"', '"kind":"QUERY"'),  # a Query without its query
    _record().to_json().replace('"patient_id":"PAT-1"', '"patient_id":1'),
])
def test_json_that_is_not_a_record_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        AuditRecord.from_json(text)


@pytest.mark.parametrize("changes", [
    {}, {"patient_id": HOSTILE, "outcome_description": "</EventOutcomeDescription>&\x00\n\t"},
    {"kind": EventKind.QUERY, "action": Action.EXECUTE, "studies": (), "resource": "/exams/studies?<&",
     "query": (("PatientId", '<x>&"\t'),)},
    {"actor": Actor(subject='"><Evil/>\t\r\n', roles=("pa\x00tient",), issuer="i&", address="not an <ip>")},
])
def test_the_message_is_what_elementtree_writes_of_it(changes: dict[str, object]) -> None:
    """The markup is written as text, in ElementTree's serialisation: parsed and written again by ElementTree, the
    same characters (a carriage return in text content aside, which XML reads back as a line feed)."""
    data = to_xml(_record(**changes), SOURCE_ID)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    text = data.decode("utf-8").split("\n", 1)[1]
    assert ET.tostring(ET.fromstring(data), encoding="unicode") == text  # noqa: S314 - our own XML
