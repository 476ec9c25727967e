"""The property the gateway exists for: with two patients' files sharing one study and one series UID, no answer to
either patient (their own token, or a viewer token for the shared study) holds a byte of the other's data.

Every `/dicomweb` and `/exams` route is walked with each caller, in front of the real Orthanc (which keeps the two
patients apart) and in front of `MergingPacs` (a PACS that serves everything it holds under a UID), and each answer
is searched for the other patient's PatientID, name, marker and SOP Instance UIDs. UIDs the caller itself put in the
URL are allowed back (an error may name the path asked for); nothing else is.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pydicom
import pytest

from tests.security.shared_uids import MergingPacs, Person, SharedScene, shared_scene
from tests.support.exams_support import clinician, gateway, patient
from tests.support.orthanc import Orthanc
from tests.support.servers import serve

VIEWER_SECRET = "viewer-secret-for-the-shared-uid-tests-0123456789"


@pytest.fixture(scope="module")
def scene(orthanc: Orthanc) -> SharedScene:
    return shared_scene(orthanc.dicomweb_url)


@asynccontextmanager
async def in_front_of(orthanc: Orthanc, pacs: str) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of Orthanc itself (`orthanc` profile) or of a merging PACS (`standard` profile)."""
    if pacs == "orthanc":
        async with gateway(orthanc.dicomweb_url, viewer_token_secret=VIEWER_SECRET) as client:
            yield client
        return
    with serve(MergingPacs(orthanc.url)) as server:
        async with gateway(f"{server.url}/dicom-web", pacs_profile="standard",
                           viewer_token_secret=VIEWER_SECRET) as client:
            yield client


@dataclass
class Walk:
    client: httpx.AsyncClient
    scene: SharedScene
    me: Person
    other: Person
    answers: int = 0

    async def get(self, url: str, headers: dict[str, str], accept: str | None = None) -> httpx.Response:
        sent = {**headers, **({"Accept": accept} if accept else {})}
        response = await self.client.get(url, headers=sent)
        assert response.status_code < 500, (url, response.status_code, response.text[:300])
        asked = str(response.request.url).encode()
        for secret in self.other.secrets():
            if secret not in asked:
                assert secret not in response.content, (url, secret, response.status_code)
        self.answers += 1
        return response

    def dicomweb_paths(self) -> list[str]:
        s, se = self.scene.study, self.scene.series
        paths = ["studies", "series", "instances", f"studies?StudyInstanceUID={s}",
                 f"studies?PatientID={self.other.patient_id}", f"studies?00100020={self.other.patient_id}",
                 f"series?StudyInstanceUID={s}&includefield=all", f"instances?StudyInstanceUID={s}",
                 f"studies/{s}/series", f"studies/{s}/instances", f"studies/{s}/series/{se}/instances",
                 f"studies/{s}/metadata", f"studies/{s}/series/{se}/metadata",
                 f"studies/{s}", f"studies/{s}/series/{se}",
                 f"studies/{s}/rendered", f"studies/{s}/series/{se}/rendered", f"studies/{s}/thumbnail"]
        for person in (self.me, self.other):
            for item in person.all:
                base = f"studies/{s}/series/{se}/instances/{item.sop_uid}"
                paths += [base, f"{base}/metadata", f"{base}/rendered", f"{base}/thumbnail", f"{base}/frames/1",
                          f"{base}/frames/1/rendered", f"{base}/bulk/7fe00010"]
        return [f"/dicomweb/{p}" for p in paths]

    async def dicomweb(self, headers: dict[str, str]) -> None:
        for path in self.dicomweb_paths():
            await self.get(path, headers)
        for item in (*self.me.all, *self.other.all):
            await self.get(f"/dicomweb/studies/{self.scene.study}/series/{self.scene.series}/instances/"
                           f"{item.sop_uid}", headers, accept="application/dicom")
        # Not vacuous: the caller's own part of the shared study is there, whole.
        listed = await self.get(f"/dicomweb/studies/{self.scene.study}/series/{self.scene.series}/instances", headers)
        assert {ds["00080018"]["Value"][0] for ds in listed.json()} == {i.sop_uid for i in self.me.all}
        own = self.me.instances[0]
        mine = await self.get(f"/dicomweb/studies/{self.scene.study}/series/{self.scene.series}/instances/"
                              f"{own.sop_uid}", headers, accept="application/dicom")
        assert mine.status_code == 200
        assert mine.content == own.without_preamble[-len(mine.content):] or self.me.marker.encode() in mine.content

    async def exams(self, headers: dict[str, str]) -> None:
        s, se = self.scene.study, self.scene.series
        for patient_id in (self.me.patient_id, self.other.patient_id):
            q = f"PatientId={patient_id}"
            for path in (f"/exams/studies?{q}", f"/exams/studies/{s}/series?{q}",
                         f"/exams/studies/{s}/series/{se}/instances?{q}"):
                await self.get(path, headers)
            for item in (*self.me.all, *self.other.all):
                for file_type in ("application/dicom", "image/jpeg"):
                    await self.get(f"/exams/studies/{s}/series/{se}/instance/{item.sop_uid}?{q}&fileType={file_type}",
                                   headers)
        listed = await self.get(f"/exams/studies/{s}/series/{se}/instances?PatientId={self.me.patient_id}", headers)
        assert {ds["00080018"]["Value"][0] for ds in listed.json()} == {i.sop_uid for i in self.me.all}


async def viewer_token(client: httpx.AsyncClient, study: str, headers: dict[str, str],
                       patient_id: str | None = None) -> str:
    params = {"studyUID": study, **({"patientID": patient_id} if patient_id else {})}
    answer = await client.get("/token", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


@pytest.mark.parametrize("pacs", ["orthanc", "merging"])
@pytest.mark.parametrize("who", ["victim", "intruder"])
async def test_no_answer_to_one_patient_holds_a_byte_of_the_other_sharing_its_uids(
    orthanc: Orthanc, scene: SharedScene, pacs: str, who: str
) -> None:
    me, other = (scene.victim, scene.intruder) if who == "victim" else (scene.intruder, scene.victim)
    async with in_front_of(orthanc, pacs) as client:
        walk = Walk(client, scene, me, other)
        own_token = patient(me.patient_id)
        await walk.exams(own_token)
        await walk.dicomweb(own_token)
        for issued_by, patient_id in ((own_token, None), (clinician(), me.patient_id)):
            viewer = await viewer_token(client, scene.study, issued_by, patient_id)
            await walk.dicomweb({"Authorization": f"Bearer {viewer}"})
    assert walk.answers >= 230  # every route above was asked (a walk cut short would fail here)


async def test_a_merged_retrieval_answers_with_the_callers_parts_only(orthanc: Orthanc, scene: SharedScene) -> None:
    """A PACS that serves both patients' instances for the shared series: the gateway passes the victim's three
    instances, part by part, and none of the intruder's (the merging PACS was really asked)."""
    pacs = MergingPacs(orthanc.url)
    with serve(pacs) as server:
        async with gateway(f"{server.url}/dicom-web", pacs_profile="standard") as client:
            answer = await client.get(f"/dicomweb/studies/{scene.study}/series/{scene.series}",
                                      headers=patient(scene.victim.patient_id))
            clinician_answer = await client.get(f"/dicomweb/studies/{scene.study}", headers=clinician())
    assert pacs.merged  # the PACS really answered with both patients' files
    assert answer.status_code == 200
    assert "content-length" not in answer.headers
    assert await sop_uids_in(answer) == sorted(i.sop_uid for i in scene.victim.all)
    assert await sop_uids_in(clinician_answer) == sorted(i.sop_uid for p in (scene.victim, scene.intruder)
                                                         for i in p.all)


async def sop_uids_in(answer: httpx.Response) -> list[str]:
    """The SOP Instance UIDs of the files in a multipart/related answer (split by its boundary, RFC 2046 §5.1.1)."""
    boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    uids = []
    for part in answer.content.split(b"\r\n--" + boundary.encode())[:-1]:
        body = part.split(b"\r\n\r\n", 1)[1]
        uids.append(str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID))
    return sorted(uids)
