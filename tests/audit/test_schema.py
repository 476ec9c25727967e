"""The gateway's audit messages, validated by libxml2's RELAX NG validator (`xmllint --relaxng`) against
`gateway/audit/schema/audit-message.rng`, the XML-syntax translation of the A.5.1.1 schema `audit-message.rnc`.

`tests/audit/test_messages.py` checks the same messages with a hand-written transcription of the content model;
this file checks them with a real validator: every event kind the gateway writes and the hostile values validate,
and damaged messages are refused (so the schema constrains, and these tests can fail). A test also ties the
translation to the .rnc: the same defines, element and attribute names, values, datatypes and operators, as many
times each. Skipped only when xmllint is not installed (`make deps` installs it, Debian `libxml2-utils`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

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
    StudyRef,
)
from tests.audit.test_messages import (
    CT,
    HOSTILE,
    SERIES,
    SOURCE_ID,
    STUDY,
    _at,
    _detail_before_id_type,
    _record,
    _source_first,
    _without_name,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "gateway" / "audit" / "schema"
RNG = SCHEMA_DIR / "audit-message.rng"
RNC = SCHEMA_DIR / "audit-message.rnc"
XMLLINT = shutil.which("xmllint")
XSD = "http://www.w3.org/2001/XMLSchema-datatypes"
RELAXNG = "{http://relaxng.org/ns/structure/1.0}"

needs_xmllint = pytest.mark.skipif(
    XMLLINT is None, reason="xmllint is not installed (Debian libxml2-utils): run `make deps`")


def _xmllint(data: bytes, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert XMLLINT is not None
    message = tmp_path / "message.xml"
    message.write_bytes(data)
    return subprocess.run([XMLLINT, "--noout", "--relaxng", str(RNG), str(message)],
                          capture_output=True, text=True, timeout=60, check=False)


# --- every event kind the gateway writes, and the hostile values ------------------------------------------------

CLINICIAN = Actor(subject="dr.bob", roles=("clinician",), issuer="https://idp.example.org")
PACS = Actor(subject="orthanc", roles=("pacs",), address="10.0.0.5")
HOSTILE_ACTOR = Actor(subject='"><Evil/>\t\r\n', roles=("pa\x00tient",), issuer="i\x01", address="not an <ip>")


def _outcome(outcome: Outcome) -> AuditRecord:
    return _record(outcome=outcome, outcome_description="" if outcome is Outcome.SUCCESS else "failed")


RECORDS: dict[str, Callable[[], AuditRecord]] = {
    "query": lambda: _record(kind=EventKind.QUERY, action=Action.EXECUTE, studies=(), resource="/exams/studies",
                             query=(("PatientId", "PAT-1"), ("StudyDate", "20260101-"))),
    "thumbnail, instances accessed": lambda: _record(studies=(StudyRef(STUDY, series_uids=(SERIES,)),)),
    "download": lambda: _record(
        kind=EventKind.INSTANCES_TRANSFERRED, data_flow=DataFlow.TO_ACTOR, studies=(
            StudyRef(STUDY, instances=(InstanceRef("1.2.3.1", CT), InstanceRef("1.2.3.2"),
                                       InstanceRef("1.2.3.3", CT))),
            StudyRef("1.2.3.9"),
        )),
    "upload": lambda: _record(kind=EventKind.INSTANCES_TRANSFERRED, action=Action.CREATE,
                              data_flow=DataFlow.FROM_ACTOR),
    "begin transferring": lambda: _record(kind=EventKind.BEGIN_TRANSFERRING, action=Action.EXECUTE,
                                          data_flow=DataFlow.FROM_ACTOR),
    "order record C": lambda: _record(kind=EventKind.ORDER_RECORD, action=Action.CREATE, studies=(),
                                      actor=CLINICIAN),
    "order record R": lambda: _record(kind=EventKind.ORDER_RECORD, action=Action.READ, studies=(), actor=CLINICIAN),
    "order record U": lambda: _record(kind=EventKind.ORDER_RECORD, action=Action.UPDATE, studies=(),
                                      actor=CLINICIAN),
    "procedure record": lambda: _record(kind=EventKind.PROCEDURE_RECORD, action=Action.CREATE, actor=PACS),
    "alert, use of restricted function": lambda: _record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE,
        outcome_description="patient PAT-1 named patient PAT-2", patient_id="PAT-2", studies=(),
        resource="/exams/studies?PatientId=PAT-2", alert=AlertType.USE_OF_RESTRICTED_FUNCTION),
    "alert, node authentication": lambda: _record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE,
        actor=Actor(subject="", address="198.51.100.1"), patient_id=None, studies=(), resource="/exams/studies",
        alert=AlertType.NODE_AUTHENTICATION),
    "viewer token issued": lambda: _record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.SUCCESS,
        outcome_description="viewer token for one study, 3600 s", resource="/token?StudyInstanceUID=" + STUDY,
        alert=AlertType.OBJECT_SECURITY_ATTRIBUTES_CHANGED),
    **{f"outcome {outcome.name}": partial(_outcome, outcome) for outcome in Outcome},
    "hostile patient id": lambda: _record(patient_id=HOSTILE,
                                          outcome_description="</EventOutcomeDescription>&\x00\r\n\t"),
    "patient id a token reader would normalise": lambda: _record(patient_id=" PAT  1 "),
    "non-ASCII patient id": lambda: _record(patient_id="Zoë-1"),
    "hostile actor": lambda: _record(actor=HOSTILE_ACTOR),
    "hostile query": lambda: _record(
        kind=EventKind.QUERY, action=Action.EXECUTE, studies=(), actor=HOSTILE_ACTOR, resource="/exams/studies?<",
        query=(("PatientId", "<x>&\x00"), ("\udc80", "é"), ("PatientId", '<x>&"\t'))),
    "hostile everything": lambda: _record(
        kind=EventKind.QUERY, action=Action.EXECUTE, outcome=Outcome.SERIOUS_FAILURE, outcome_description=HOSTILE,
        patient_id=HOSTILE, studies=(StudyRef(STUDY, (SERIES,), (InstanceRef("1.2.3.1", CT), InstanceRef("1.2"))),),
        resource="/dicomweb/studies?" + HOSTILE, query=((HOSTILE, "é"), ("limit", "10")),
        actor=Actor(subject=HOSTILE, roles=("patient", "viewer"), issuer=None, address=None, is_requestor=False)),
    "hostile alert": lambda: _record(
        kind=EventKind.SECURITY_ALERT, action=Action.EXECUTE, outcome=Outcome.MINOR_FAILURE, actor=HOSTILE_ACTOR,
        outcome_description=HOSTILE, patient_id=HOSTILE, studies=(), resource="/exams/" + HOSTILE,
        alert=AlertType.USE_OF_RESTRICTED_FUNCTION),
}


def test_every_event_kind_and_alert_type_is_among_the_records() -> None:
    records = [make() for make in RECORDS.values()]
    assert {r.kind for r in records} == set(EventKind)
    assert {r.alert for r in records} - {None} == set(AlertType)
    assert {r.action for r in records if r.kind is EventKind.ORDER_RECORD} == {Action.CREATE, Action.READ,
                                                                              Action.UPDATE}


@needs_xmllint
@pytest.mark.parametrize("name", list(RECORDS))
def test_the_message_validates_against_the_schema(name: str, tmp_path: Path) -> None:
    ran = _xmllint(to_xml(RECORDS[name](), SOURCE_ID), tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "validates" in ran.stderr, ran.stderr


# --- damaged messages are refused -------------------------------------------------------------------------------

def _remove_query(root: ET.Element) -> None:
    for parent in root.iter("ParticipantObjectIdentification"):
        for query in parent.findall("ParticipantObjectQuery"):
            parent.remove(query)


def _name_and_query(root: ET.Element) -> None:
    for parent in root.iter("ParticipantObjectIdentification"):
        if parent.find("ParticipantObjectQuery") is not None:
            parent.insert(1, ET.Element("ParticipantObjectName"))


def _without_participants(root: ET.Element) -> None:
    for participant in root.findall("ActiveParticipant"):
        root.remove(participant)


def _event_id_after_description(root: ET.Element) -> None:
    event = _at(root, "EventIdentification")
    event_id = _at(event, "EventID")
    event.remove(event_id)
    event.append(event_id)


DAMAGES: dict[str, tuple[Callable[[], AuditRecord], Callable[[ET.Element], object]]] = {
    # test_messages' damage list
    "no ParticipantObjectName": (_record, _without_name),
    "AuditSourceIdentification first": (_record, _source_first),
    "ParticipantObjectIDTypeCode last": (_record, _detail_before_id_type),
    "EventID without originalText": (
        _record, lambda root: _at(root, "EventIdentification/EventID").attrib.pop("originalText")),
    "EventOutcomeIndicator 2": (
        _record, lambda root: _at(root, "EventIdentification").set("EventOutcomeIndicator", "2")),
    "UserIsRequestor yes": (_record, lambda root: _at(root, "ActiveParticipant").set("UserIsRequestor", "yes")),
    "an unknown attribute": (_record, lambda root: _at(root, "ActiveParticipant").set("Role", "x")),
    "an unknown element": (_record, lambda root: ET.SubElement(root, "Extra")),
    "no ActiveParticipant": (_record, _without_participants),
    "detail value not base64": (_record, lambda root: _at(
        root, "ParticipantObjectIdentification/ParticipantObjectDetail").set("value", "not base64!")),
    # and more
    "no ParticipantObjectQuery": (RECORDS["query"], _remove_query),
    "both ParticipantObjectName and ParticipantObjectQuery": (RECORDS["query"], _name_and_query),
    "EventActionCode X": (_record, lambda root: _at(root, "EventIdentification").set("EventActionCode", "X")),
    "EventDateTime not a dateTime": (
        _record, lambda root: _at(root, "EventIdentification").set("EventDateTime", "2026-12-01 14:30")),
    "EventID after EventOutcomeDescription": (
        lambda: _record(outcome=Outcome.MINOR_FAILURE, outcome_description="failed"), _event_id_after_description),
    "NumberOfInstances not an integer": (RECORDS["download"], lambda root: _at(
        root, ".//SOPClass").set("NumberOfInstances", "two")),
    "SOPClass without NumberOfInstances": (RECORDS["download"], lambda root: _at(
        root, ".//SOPClass").attrib.pop("NumberOfInstances")),
    "no AuditSourceID": (_record, lambda root: _at(root, "AuditSourceIdentification").attrib.pop("AuditSourceID")),
    "AuditSourceTypeCode with codeSystemName alone": (
        _record, lambda root: _at(root, ".//AuditSourceTypeCode").set("codeSystemName", "DCM")),
    "ParticipantObjectTypeCodeRole 27": (_record, lambda root: _at(
        root, "ParticipantObjectIdentification").set("ParticipantObjectTypeCodeRole", "27")),
    "ParticipantObjectQuery not base64": (RECORDS["query"], lambda root: setattr(
        _at(root, ".//ParticipantObjectQuery"), "text", "not base64!")),
}


@needs_xmllint
@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_message_is_refused(name: str, tmp_path: Path) -> None:
    make, damage = DAMAGES[name]
    data = to_xml(make(), SOURCE_ID)
    assert _xmllint(data, tmp_path).returncode == 0  # undamaged, it validates
    root = ET.fromstring(data)  # noqa: S314 -- the gateway's own output
    damage(root)
    damaged = ET.tostring(root, encoding="unicode").encode("utf-8")
    ran = _xmllint(b'<?xml version="1.0" encoding="UTF-8"?>\n' + damaged, tmp_path)
    assert ran.returncode == 3, ran.stderr  # xmllint's "validation failed", not a schema or parse error
    assert "fails to validate" in ran.stderr, ran.stderr


# --- the .rng is the .rnc's patterns ----------------------------------------------------------------------------

def _rnc_counts() -> Counter[str]:
    text = RNC.read_text(encoding="utf-8")
    datatypes = 'datatypes xsd = "http://www.w3.org/2001/XMLSchema-datatypes"'
    assert datatypes in text
    text = re.sub(r"#.*", "", text.replace(datatypes, ""))  # comments and the datatypes declaration
    counts: Counter[str] = Counter()
    counts.update(f"define {name}" for name in re.findall(r"^([\w-]+) =", text, re.MULTILINE))
    counts.update(f"element {name}" for name in re.findall(r"\belement ([\w-]+)", text))
    counts.update(f"attribute {name}" for name in re.findall(r"\battribute ([\w-]+)", text))
    counts.update(f"value {value}" for value in re.findall(r'"([^"]*)"', text))
    counts.update(f"xsd:{name}" for name in re.findall(r"\bxsd:(\w+)", text))
    counts.update(f"built-in {name}" for name in re.findall(r"(?<![:\w-])(token|string)(?![\w-])", text))
    counts["text"] = len(re.findall(r"\btext\b", text))
    counts["ref"] = sum(len(re.findall(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)) - 1
                        for name in re.findall(r"^([\w-]+) =", text, re.MULTILINE))
    counts["zeroOrMore"], counts["optional"], counts["oneOrMore"] = text.count("*"), text.count("?"), text.count("+")
    counts["choice branches"], counts["interleave"] = text.count("|"), text.count("&")
    return counts


def _rng_counts() -> Counter[str]:
    grammar = ET.parse(RNG).getroot()  # noqa: S314 -- the project's own schema file
    assert grammar.tag == f"{RELAXNG}grammar"
    assert "datatypeLibrary" not in grammar.attrib  # the built-in library, as the .rnc's token and literals
    counts: Counter[str] = Counter()
    for node in grammar.iter():
        assert node.tag.startswith(RELAXNG), node.tag
        tag = node.tag.removeprefix(RELAXNG)
        if tag in ("define", "element", "attribute"):
            counts[f"{tag} {node.attrib['name']}"] += 1
        elif tag == "value":
            assert "type" not in node.attrib
            assert "datatypeLibrary" not in node.attrib
            counts[f"value {node.text}"] += 1
        elif tag == "data":
            library = node.get("datatypeLibrary")
            assert library in (None, XSD), library
            counts[f"xsd:{node.attrib['type']}" if library == XSD else f"built-in {node.attrib['type']}"] += 1
        elif tag == "choice":
            counts["choice branches"] += len(node) - 1
        elif tag in ("text", "ref", "zeroOrMore", "optional", "oneOrMore", "interleave"):
            counts[tag] += 1
        else:
            assert tag in ("grammar", "group", "start"), tag
    # The .rnc's "start = message" is a define to the regex above, and a <start> element here.
    counts["define start"] += 1
    return counts


def test_the_rng_has_the_rncs_patterns() -> None:
    rnc, rng = _rnc_counts(), _rng_counts()
    assert rnc["define message"] == 1
    assert rnc["xsd:base64Binary"] == 2
    assert rnc["choice branches"] > 60
    assert +rng == +rnc, (rnc - rng, rng - rnc)
