"""Two patients' uploads racing into the same new UIDs: the checks before the store pass for both, so a patient's
upload checks again after it. The race is made deterministic by a PACS stand-in that stores the rival's file into
Orthanc just before it passes the gateway's STOW-RS on: the later upload is removed again and answered 409, the
rival's data stays as it was, and Orthanc is asked directly what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.callbacks.test_callbacks import stow_direct
from tests.support.dicom_factory import Instance, generated, new_uid
from tests.support.exams_support import clinician, error, gateway, new_patient_id, patient
from tests.support.orthanc import Orthanc
from tests.support.recorder import RecordingProxy
from tests.support.servers import serve


@dataclass
class RacingPacs:
    """Orthanc, where another upload lands between the gateway's checks and its STOW-RS."""

    orthanc: Orthanc
    rival: Instance
    proxy: RecordingProxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/dicom-web/studies":
            stow_direct(self.orthanc.dicomweb_url, [self.rival.data])
        await self.proxy(scope, receive, send)


def held(orthanc: Orthanc, sop_uid: str) -> list[str]:
    """The PatientIDs of the instances Orthanc holds under this SOP Instance UID."""
    found = httpx.get(f"{orthanc.dicomweb_url}/instances", params={"SOPInstanceUID": sop_uid,
                                                                   "includefield": "00100020"}).json()
    return sorted(ds["00100020"]["Value"][0] for ds in found)


@pytest.mark.parametrize("shared", ["study", "series", "instance"])
async def test_an_upload_that_raced_another_patients_into_its_uids_is_removed_and_409(
    orthanc: Orthanc, shared: str
) -> None:
    rival_id, attacker = new_patient_id("RIVAL"), new_patient_id("RACER")
    study, series, sop = new_uid(), new_uid(), new_uid()
    rival = generated(rival_id, study_uid=study, series_uid=series if shared != "study" else None,
                      sop_uid=sop if shared == "instance" else None)
    mine = generated(attacker, study_uid=study if shared != "series" else None,
                     series_uid=series if shared != "study" else None, sop_uid=sop if shared == "instance" else None)
    pacs = RacingPacs(orthanc, rival, RecordingProxy(orthanc.url))
    with serve(pacs) as server:
        async with gateway(f"{server.url}/dicom-web") as client:
            files = [("file", ("mine.dcm", mine.data, "application/dicom"))]
            body = error(await client.post("/exams", files=files, headers=patient(attacker)), 409, "conflict")
    assert body["details"]["reason"] == "uid_in_use"
    assert rival_id not in str(body)
    assert held(orthanc, mine.sop_uid) == ([rival_id] if shared == "instance" else [])  # mine is gone
    assert held(orthanc, rival.sop_uid) == [rival_id]  # the rival's is untouched
    assert any(seen.method == "DELETE" for seen in pacs.proxy.seen)


async def test_a_clinicians_upload_whose_uid_lookups_answer_after_the_store_is_removed_again(
    recorder: tuple[RecordingProxy, str], orthanc: Orthanc
) -> None:
    """A clinician's upload does not wait for the shared-UID lookups (gateway.exams.uploads: their latency on every
    upload); when they answer only after the store, and name another patient's study, the stored instances are
    removed again by their exact ids and the answer is 409, as if refused first."""
    proxy, url = recorder
    proxy.delays["/tools/lookup"] = 1.0  # every UID lookup answers after the store has long begun
    victim, study = new_patient_id("VICTIM"), new_uid()
    stow_direct(orthanc.dicomweb_url, [generated(victim, study_uid=study).data])
    intrusion = generated(new_patient_id("OTHER"), study_uid=study)
    async with gateway(url) as client:
        files = [("file", ("x.dcm", intrusion.data, "application/dicom"))]
        body = error(await client.post("/exams", files=files, headers=clinician()), 409, "conflict")
    assert body["details"] == {"reason": "uid_in_use", "uids": [study]}
    methods = [(seen.method, seen.path) for seen in proxy.seen]
    assert ("POST", "/dicom-web/studies") in methods  # it was stored
    assert any(method == "DELETE" for method, _ in methods)  # and removed again
    assert held(orthanc, intrusion.sop_uid) == []
