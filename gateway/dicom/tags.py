"""The DICOM attributes the gateway reads or writes, as their tags appear in DICOM JSON (PS3.18 Annex F).

One home for every tag: a module that needs one imports it from here and never spells the hex itself.
"""

from __future__ import annotations

# Patient, study, series and instance identity (PS3.3 C.7.1.1, C.7.2.1, C.7.3.1, C.12.1).
SPECIFIC_CHARACTER_SET = "00080005"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
ACCESSION_NUMBER = "00080050"
PATIENT_ID = "00100020"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
ROWS = "00280010"
COLUMNS = "00280011"

# Code Sequence Macro items (PS3.3 Table 8.8-1).
CODE_VALUE = "00080100"
CODING_SCHEME = "00080102"
CODE_MEANING = "00080104"

# STOW-RS answers (PS3.18 §10.5.3, Table 10.5.3-1).
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"

# Worklist: UPS (PS3.4 Table CC.2.5-3) and the MWL Scheduled Procedure Step (PS3.4 Table K.6-1).
SCHEDULED_STEP = "00400100"  # Scheduled Procedure Step Sequence (MWL)
START_DATETIME = "00404005"  # Scheduled Procedure Step Start DateTime (DT)
WORKITEM_CODE = "00404018"  # Scheduled Workitem Code Sequence
STATION_NAME_CODE = "00404025"  # Scheduled Station Name Code Sequence
STATION_CLASS_CODE = "00404026"  # Scheduled Station Class Code Sequence
HUMAN_PERFORMERS = "00404034"  # Scheduled Human Performers Sequence
REFERENCED_REQUEST = "0040A370"  # Referenced Request Sequence
PROCEDURE_STEP_STATE = "00741000"
PROCEDURE_STEP_LABEL = "00741204"
REASON_FOR_CANCELLATION = "00741238"
