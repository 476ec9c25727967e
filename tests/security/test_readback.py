"""The read-back after a patient's upload (`gateway.exams.readback`): a PACS that files an instance under another
PatientID than the gateway checked makes the upload 502, the instance is removed (Orthanc), and a security event is
logged.

No byte the gateway accepts makes Orthanc 1.10 misfile (that is the rule's job, test_patient_id_bytes), so the
mismatch is forced: a PACS stand-in in front of the real Orthanc that rewrites the PatientID of what it is sent (as
a PACS coercing identifiers would), and the read-back on its own against a file stored under another ID.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from gateway.components import upstream_client
from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.part10 import InstanceHeader
from gateway.errors import UpstreamFailed
from gateway.exams.readback import verify_filed_patient
from gateway.ops.metrics import Metrics
from tests.conftest import make_settings
from tests.security.crafted import filed_under, stow_direct
from tests.support.dicom_factory import generated
from tests.support.exams_support import Exams, clinician, error, gateway, new_patient_id, patient
from tests.support.orthanc import Orthanc
from tests.support.pacs_standin import CoercingPacs
from tests.support.servers import serve


@pytest.mark.parametrize("profile", ["orthanc", "standard"])
async def test_upload_filed_under_another_patient_is_502_removed_and_logged(orthanc: Orthanc, profile: str) -> None:
    me = new_patient_id("SELF")
    other = "OTHR" + me[4:]  # same length: the stand-in swaps the bytes in place
    files = [generated(me), generated(me)]
    with serve(CoercingPacs(orthanc.url, me.encode(), other.encode())) as pacs:
        async with gateway(f"{pacs.url}/dicom-web", pacs_profile=profile) as client:
            with capture_logs() as logs:
                response = await Exams(client).upload(*files, headers=patient(me))
    body = error(response, 502, "upstream_error")
    assert body["details"]["reason"] == "patient_id_mismatch"
    assert sorted(body["details"]["instances"]) == sorted(f.sop_uid for f in files)
    [event] = [entry for entry in logs if entry["event"] == "security_patient_id_mismatch"]
    assert event["log_level"] == "warning"
    assert event["instances"] == 2
    assert me not in str(event)
    assert other not in str(event)
    for file in files:
        if profile == "orthanc":  # native DELETE: gone
            assert body["details"]["removed"] == 2
            assert await filed_under(orthanc.url, file.sop_uid) == []
        else:  # no delete in DICOMweb: reported, left for the operator
            assert body["details"]["removed"] == 0
            assert await filed_under(orthanc.url, file.sop_uid) == [other]


async def test_a_removal_the_pacs_fails_still_gives_the_502_and_the_security_event(orthanc: Orthanc) -> None:
    """The clean-up DELETE fails: the upload is still refused as misfiled, with nothing reported removed, and both
    the security event and the failed clean-up are logged, for an operator to remove the instance by hand."""
    me = new_patient_id("SELF")
    other = "OTHR" + me[4:]
    file = generated(me)
    with serve(CoercingPacs(orthanc.url, me.encode(), other.encode(), fail_deletes=True)) as pacs:
        async with gateway(f"{pacs.url}/dicom-web", pacs_profile="orthanc") as client:
            with capture_logs() as logs:
                response = await Exams(client).upload(file, headers=patient(me))
    body = error(response, 502, "upstream_error")
    assert body["details"] == {"reason": "patient_id_mismatch", "instances": [file.sop_uid], "removed": 0}
    [event] = [entry for entry in logs if entry["event"] == "security_patient_id_mismatch"]
    assert (event["log_level"], event["removed"]) == ("warning", 0)
    # The race re-check fails its clean-up too: it sees the misfiled copy as another patient's data in these UIDs.
    cleanups = [entry for entry in logs if entry["event"] == "upstream_cleanup_failed"]
    assert sorted(entry["operation"] for entry in cleanups) == ["stow_race_remove", "stow_readback_remove"]
    assert {entry["log_level"] for entry in cleanups} == {"warning"}
    assert me not in str(logs)
    assert other not in str(logs)
    assert await filed_under(orthanc.url, file.sop_uid) == [other]  # left for the operator, as the event says


async def test_upload_filed_as_checked_passes_the_read_back(orthanc: Orthanc) -> None:
    """The stand-in rewrites nothing of this upload: one series lookup after the STOW, and 200."""
    me = new_patient_id("SELF")
    file = generated(me)
    with serve(CoercingPacs(orthanc.url, b"NOT-IN-THIS-UPLOAD", b"NOT-IN-THIS-UPLOAD")) as pacs:
        async with gateway(f"{pacs.url}/dicom-web") as client:
            assert (await Exams(client).upload(file, headers=patient(me))).status_code == 200
            assert (await Exams(client).upload(generated(me), headers=clinician())).status_code == 200
    assert await filed_under(orthanc.url, file.sop_uid) == [me]


@dataclass(frozen=True)
class _Stored:
    header: InstanceHeader


async def test_read_back_removes_an_instance_orthanc_holds_under_another_id(orthanc: Orthanc) -> None:
    """Unit level, against the real Orthanc: an instance stored under FILED while the gateway checked CHECKED."""
    filed, checked = new_patient_id("FILED"), new_patient_id("CHECKED")
    instance = generated(filed)
    assert await stow_direct(orthanc.dicomweb_url, instance.data) == 200
    header = InstanceHeader(instance.study_uid, instance.series_uid, instance.sop_uid, "1.2.840.10008.5.1.4.1.1.2",
                            checked)
    answer = DicomJson({"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [instance.sop_uid]}}]}})
    settings = make_settings(pacs_service_url=orthanc.dicomweb_url, pacs_profile="orthanc")
    async with upstream_client(settings, Metrics()) as upstream:
        with capture_logs() as logs, pytest.raises(UpstreamFailed) as raised:
            await verify_filed_patient(upstream, [_Stored(header)], answer)
        # The same instance, checked as FILED: nothing to say.
        own = InstanceHeader(header.study_uid, header.series_uid, header.sop_instance_uid, header.sop_class_uid,
                             filed)
        assert await stow_direct(orthanc.dicomweb_url, instance.data) == 200
        await verify_filed_patient(upstream, [_Stored(own)], answer)
    assert raised.value.details == {"reason": "patient_id_mismatch", "instances": [instance.sop_uid], "removed": 1}
    assert [entry["event"] for entry in logs] == ["security_patient_id_mismatch"]
    assert await filed_under(orthanc.url, instance.sop_uid) == [filed]  # stored again above, and kept


async def test_the_removed_count_counts_files_not_the_copies_holding_their_uid(orthanc: Orthanc) -> None:
    """Two copies hold the misfiled file's SOP Instance UID (under two other patients): both are deleted, and the
    file counts once, so a file of two copies can never cover another file whose copy stayed."""
    checked = new_patient_id("CHECKED")
    first = generated(new_patient_id("FILED"))
    second = generated(new_patient_id("THIRD"), sop_uid=first.sop_uid)
    for copy in (first, second):
        assert await stow_direct(orthanc.dicomweb_url, copy.data) == 200
    header = InstanceHeader(first.study_uid, first.series_uid, first.sop_uid, "1.2.840.10008.5.1.4.1.1.2", checked)
    answer = DicomJson({"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [first.sop_uid]}}]}})
    settings = make_settings(pacs_service_url=orthanc.dicomweb_url, pacs_profile="orthanc")
    async with upstream_client(settings, Metrics()) as upstream:
        with pytest.raises(UpstreamFailed) as raised:
            await verify_filed_patient(upstream, [_Stored(header)], answer)
    assert raised.value.details == {"reason": "patient_id_mismatch", "instances": [first.sop_uid], "removed": 1}
    assert await filed_under(orthanc.url, first.sop_uid) == []
