"""Shared UIDs, the write side: no upload files a second patient's data under a study or series UID, and a study
shared around the gateway stays reachable for each of its patients (their part only), through `/token` too.

Every refusal is checked in Orthanc itself: nothing of the refused upload is stored, and the victim's study is
still whole and retrievable at the study level (Orthanc refuses study-level WADO-RS for an ambiguous UID).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from structlog.testing import capture_logs

from tests.callbacks.test_callbacks import stow_direct
from tests.security.shared_uids import SharedScene, shared_scene
from tests.support.dicom_factory import generated, new_uid
from tests.support.exams_support import Exams, clinician, error, gateway, new_patient_id, patient
from tests.support.orthanc import Orthanc
from tests.support.pacs_standin import CoercingPacs
from tests.support.servers import serve

VIEWER_SECRET = "viewer-secret-for-the-shared-uid-tests-0123456789"


@pytest.fixture
async def client(orthanc: Orthanc) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(orthanc.dicomweb_url, viewer_token_secret=VIEWER_SECRET) as client:
        yield client


def stored_patients(orthanc: Orthanc, study: str) -> list[str]:
    """The PatientIDs Orthanc holds under this StudyInstanceUID, asked of Orthanc directly."""
    found = httpx.get(f"{orthanc.dicomweb_url}/studies", params={"StudyInstanceUID": study,
                                                                 "includefield": "00100020"}).json()
    return sorted(ds["00100020"]["Value"][0] for ds in found)


def stored_sops(orthanc: Orthanc, study: str) -> set[str]:
    found = httpx.get(f"{orthanc.dicomweb_url}/studies/{study}/instances").json()
    return {ds["00080018"]["Value"][0] for ds in found}


def victim_study(orthanc: Orthanc) -> tuple[str, str, str]:
    victim, study, series = new_patient_id("VICTIM"), new_uid(), new_uid()
    stow_direct(orthanc.dicomweb_url, [generated(victim, study_uid=study, series_uid=series).data])
    return victim, study, series


@pytest.mark.parametrize("caller", ["patient", "clinician"])
async def test_an_upload_into_another_patients_study_uid_is_409_and_stores_nothing(
    orthanc: Orthanc, client: httpx.AsyncClient, caller: str
) -> None:
    victim, study, _ = victim_study(orthanc)
    attacker = new_patient_id("ATTACKER")
    intrusion = generated(attacker, study_uid=study)
    headers = patient(attacker) if caller == "patient" else clinician()
    body = error(await Exams(client).upload(intrusion, headers=headers), 409, "conflict")
    assert body["details"] == {"reason": "uid_in_use", "uids": [study]}
    assert victim not in str(body)  # it does not say whose
    assert stored_patients(orthanc, study) == [victim]
    assert intrusion.sop_uid not in stored_sops(orthanc, study)


async def test_a_clinicians_upload_of_the_victims_exam_into_uids_an_attacker_planted_is_409(
    orthanc: Orthanc, client: httpx.AsyncClient
) -> None:
    """An attacker who knows a victim's coming study and series UIDs files its own data there first; the clinician's
    upload of the victim's exam must not then make the victim's study unreachable (Orthanc refuses study-level
    requests for a UID two patients share): it is refused, and the victim's data is not filed beside the planted."""
    attacker, victim = new_patient_id("ATTACKER"), new_patient_id("VICTIM")
    study, series = new_uid(), new_uid()
    planted = generated(attacker, study_uid=study, series_uid=series)
    assert (await Exams(client).upload(planted, headers=patient(attacker))).status_code == 200
    exam = generated(victim, study_uid=study, series_uid=series)
    body = error(await Exams(client).upload(exam, headers=clinician()), 409, "conflict")
    assert body["details"]["reason"] == "uid_in_use"
    assert stored_patients(orthanc, study) == [attacker]
    assert exam.sop_uid not in stored_sops(orthanc, study)


@pytest.mark.parametrize("deletes", ["work", "fail"])
async def test_a_clinicians_upload_stored_before_its_lookups_answered_is_removed_again_and_409(
    orthanc: Orthanc, deletes: str
) -> None:
    """A clinician's upload does not wait for the shared-UID lookups: here they answer only after the store, so the
    stored intrusion is removed again by its exact id. When that DELETE fails, the answer is still 409 and the
    security event still logged, saying nothing was removed (the instance stays for an operator)."""
    victim, study, _ = victim_study(orthanc)
    intrusion = generated(new_patient_id("ATTACKER"), study_uid=study)
    with serve(CoercingPacs(orthanc.url, fail_deletes=deletes == "fail", lookup_delay_s=0.5)) as pacs:
        async with gateway(f"{pacs.url}/dicom-web", pacs_profile="orthanc") as client:
            with capture_logs() as logs:
                response = await Exams(client).upload(intrusion, headers=clinician())
    assert error(response, 409, "conflict")["details"] == {"reason": "uid_in_use", "uids": [study]}
    [event] = [entry for entry in logs if entry["event"] == "security_shared_uid_upload"]
    assert (event["log_level"], event["instances"]) == ("warning", 1)
    assert victim not in str(logs)
    if deletes == "work":
        assert event["removed"] == 1
        assert stored_patients(orthanc, study) == [victim]
    else:
        assert event["removed"] == 0
        assert [e["operation"] for e in logs if e["event"] == "upstream_cleanup_failed"] == ["stow_race_remove"]
        assert intrusion.sop_uid in stored_sops(orthanc, study)


async def test_a_clinicians_upload_whose_late_lookups_fail_is_removed_again_and_502(orthanc: Orthanc) -> None:
    """Stored before its shared-UID lookups answered, and then they fail: nothing says its UIDs were free, so the
    stored instance is removed again (fail closed) and the upload is answered as the failure, not left in place."""
    victim, study, _ = victim_study(orthanc)
    intrusion = generated(new_patient_id("ATTACKER"), study_uid=study)
    with serve(CoercingPacs(orthanc.url, fail_lookups=True, lookup_delay_s=0.5)) as pacs:
        async with gateway(f"{pacs.url}/dicom-web", pacs_profile="orthanc") as client:
            with capture_logs() as logs:
                response = await Exams(client).upload(intrusion, headers=clinician())
    error(response, 502, "upstream_error")
    [event] = [entry for entry in logs if entry["event"] == "security_shared_uid_check_failed"]
    assert (event["log_level"], event["instances"], event["removed"]) == ("warning", 1, 1)
    assert victim not in str(logs)
    assert stored_patients(orthanc, study) == [victim]
    assert intrusion.sop_uid not in stored_sops(orthanc, study)


async def test_an_upload_into_another_patients_series_uid_under_a_new_study_is_409(
    orthanc: Orthanc, client: httpx.AsyncClient
) -> None:
    _, _, series = victim_study(orthanc)
    attacker = new_patient_id("ATTACKER")
    intrusion = generated(attacker, series_uid=series)  # a fresh study UID, the victim's series UID
    body = error(await Exams(client).upload(intrusion, headers=patient(attacker)), 409, "conflict")
    assert body["details"] == {"reason": "uid_in_use", "uids": [series]}
    assert stored_patients(orthanc, intrusion.study_uid) == []


async def test_one_upload_with_two_patients_under_one_study_uid_is_409(
    orthanc: Orthanc, client: httpx.AsyncClient
) -> None:
    study = new_uid()
    first, second = generated(new_patient_id(), study_uid=study), generated(new_patient_id(), study_uid=study)
    body = error(await Exams(client).upload(first, second, headers=clinician()), 409, "conflict")
    assert body["details"]["reason"] == "uid_shared_within_upload"
    assert stored_patients(orthanc, study) == []


async def test_the_victims_study_stays_whole_and_reachable_after_refused_intrusions(
    orthanc: Orthanc, client: httpx.AsyncClient
) -> None:
    victim, study, series = victim_study(orthanc)
    before = await client.get("/token", params={"studyUID": study}, headers=patient(victim))
    viewer = {"Authorization": f"Bearer {before.json()['token']}"}
    attacker = new_patient_id("ATTACKER")
    for intrusion in (generated(attacker, study_uid=study), generated(attacker, study_uid=study, series_uid=series)):
        error(await Exams(client).upload(intrusion, headers=patient(attacker)), 409)
    # The existing viewer token still opens the whole study, a new one can be had, and Orthanc serves the study.
    assert (await client.get(f"/dicomweb/studies/{study}", headers=viewer)).status_code == 200
    after = await client.get("/token", params={"studyUID": study}, headers=patient(victim))
    assert after.status_code == 200
    assert httpx.get(f"{orthanc.dicomweb_url}/studies/{study}").status_code == 200


async def test_a_study_shared_around_the_gateway_opens_per_patient_through_token(
    orthanc: Orthanc, client: httpx.AsyncClient
) -> None:
    scene: SharedScene = shared_scene(orthanc.dicomweb_url)
    # A clinician must say whose part to open; each patient gets its own part.
    body = error(await client.get("/token", params={"studyUID": scene.study}, headers=clinician()), 409)
    assert body["details"] == {"parameter": "patientID"}
    for person in (scene.victim, scene.intruder):
        answer = await client.get("/token", params={"studyUID": scene.study}, headers=patient(person.patient_id))
        assert answer.status_code == 200, answer.text
        viewer = {"Authorization": f"Bearer {answer.json()['token']}"}
        listed = await client.get(f"/dicomweb/studies/{scene.study}/instances", headers=viewer)
        assert {ds["00080018"]["Value"][0] for ds in listed.json()} == {i.sop_uid for i in person.all}
    # A patient cannot ask for a token to a study it holds nothing of.
    stranger = new_patient_id("STRANGER")
    error(await client.get("/token", params={"studyUID": scene.study}, headers=patient(stranger)), 404)
    # The patientID a clinician names is matched exactly: wildcards and lists are refused before the PACS.
    for bad in ("*", f"{scene.victim.patient_id},{scene.intruder.patient_id}", "SHARED-*"):
        error(await client.get("/token", params={"studyUID": scene.study, "patientID": bad},
                               headers=clinician()), 400)
