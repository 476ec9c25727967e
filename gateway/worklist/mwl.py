"""A workitem in the Modality Worklist layout (PS3.4 Table K.6-1) that clients of `/workitems` read: the layout of
the contract page's `GET /workitems` example, whatever the UPS-RS dialect of the PACS.

Every tag of that example is present, with its VR, and without `Value` when unknown: at top level the patient, the
order (Accession Number, Requested Procedure ID and Description, Requesting and Referring Physician, Placer Order
Number) and the visit (Admission ID, Current Patient Location, Patient State, Confidentiality Constraint); inside the
single item of the Scheduled Procedure Step Sequence (0040,0100) the step (Modality, Scheduled Station AE Title and
Name, start date DA and time TM, performing physician, description, ID). Each field's place is
`worklist.fields.FIELDS[...].mwl`; the values are read from the UPS dataset by `worklist.ups.read_workitem`.

Also shown, beyond the example: Specific Character Set (0008,0005) `ISO_IR 192` (dicom+json is Unicode, PS3.18
§F.2; the page's example spells it "ISO-IR 192", a typo of the defined term, which its exams example spells right),
the workitem's own SOP Instance UID (0008,0018) and its Procedure Step State (0074,1000), so that a client can tell
a cancelled workitem from a scheduled one, and Service Episode ID (0038,0060) when known. Nothing else of the UPS
dataset is shown: the Transaction UID (0008,1195), the lock of a claimed workitem, cannot leave this way.
"""

from __future__ import annotations

from typing import Any

from gateway.dicom.tags import PROCEDURE_STEP_STATE, SCHEDULED_STEP, SOP_INSTANCE_UID, SPECIFIC_CHARACTER_SET
from gateway.worklist.fields import FIELDS
from gateway.worklist.ups import Dataset, read_workitem, values

UTF8 = "ISO_IR 192"  # PS3.3 C.12.1.1.2: Unicode in UTF-8


def _element(vr: str, found: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": found} if found else {"vr": vr}


def mwl_workitem(ups: Dataset) -> Dataset:
    """The MWL dataset of a UPS workitem as the PACS returned it."""
    read = read_workitem(ups)
    top: Dataset = {SPECIFIC_CHARACTER_SET: _element("CS", [UTF8])}
    step: Dataset = {}
    for field in FIELDS:
        found = read[field.name]
        if not found and not field.always_shown:
            continue
        holder = step if field.mwl[0] == SCHEDULED_STEP else top
        holder[field.mwl[-1]] = _element(field.vr, found)
    top[SCHEDULED_STEP] = {"vr": "SQ", "Value": [dict(sorted(step.items()))]}
    for tag, vr in ((SOP_INSTANCE_UID, "UI"), (PROCEDURE_STEP_STATE, "CS")):
        found = values(ups, tag)
        if found:
            top[tag] = _element(vr, found[:1])
    return dict(sorted(top.items()))
