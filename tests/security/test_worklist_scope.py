"""The worklist keeps a study to one patient, and says nothing about another patient's study.

A StudyInstanceUID is neither secret nor chosen by the gateway when the client gives one, so a patient (or a
mistaken clinician) can name another patient's study in `POST /workitems`. The gateway refuses such a create, in
every state of the other patient's workitem and when the PACS holds that patient's images under the UID, with one
answer that names neither the state nor where the other patient's data is. Checked against the UPS-RS simulator
(tests/ups_simulator.py), which also plays the image archive behind the same root, in each real server's profile.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.exams_support import clinician, patient
from tests.support.ups_simulator import CANCELED, COMPLETED, IN_PROGRESS, SCHEDULED
from tests.worklist.test_workitems import PROFILES, Stack, first, seed, stack

VICTIM, ATTACKER = "VICTIM-1", "ATT-1"
STUDY = "1.2.826.0.1.3680043.10.777.4242"
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
# The one answer for a study that holds another patient's workitem (any state) or images.
UID_IN_USE = {"code": "conflict", "message": "this StudyInstanceUID already holds another patient's data",
              "details": {"StudyInstanceUID": STUDY, "reason": "uid_in_use"}}
STUDY_CAP = 1000  # gateway.worklist.routes.MAX_STUDY_WORKITEMS: more workitems than this for one study fails closed


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def body(profile: str, patient_id: str, **changes: Any) -> dict[str, Any]:
    """The victim's order as the attacker copies it: the same study, name and accession; only the PatientID differs."""
    return seed(profile, PatientID=patient_id, StudyInstanceUID=STUDY, PatientName="VICTIM^VERA",
                AccessionNumber="VICTIM-ACC", **changes)


def move_to(s: Stack, uid: str, state: str) -> None:
    if state in (IN_PROGRESS, COMPLETED):
        s.ups.claim(uid)
    if state == COMPLETED:
        s.ups.complete(uid)
    if state == CANCELED:
        s.ups.cancel(uid)


def creates(s: Stack) -> int:
    return len([r for r in s.ups.requests if r[0] == "POST" and r[1] == s.ups.base_path])


def copies(s: Stack, uid: str, count: int, *, state: str, patient_id: str | None = None) -> None:
    """`count` more workitems like `uid` in the PACS (another system's, or earlier creates), in `state`."""
    template = s.ups.workitems[uid]
    for index in range(count):
        copied = copy.deepcopy(template)
        copied["00741000"] = {"vr": "CS", "Value": [state]}
        if patient_id is not None:
            copied["00100020"] = {"vr": "LO", "Value": [patient_id]}
        copy_uid = f"{uid}.{index + 1}"
        copied["00080018"] = {"vr": "UI", "Value": [copy_uid]}
        s.ups.workitems[copy_uid] = copied


@pytest.mark.parametrize("state", STATES)
async def test_a_patient_cannot_take_over_another_patients_study_nor_learn_its_state(profile: str,
                                                                                    state: str) -> None:
    async with stack(profile) as s:
        victims = await s.create(body(profile, VICTIM))
        assert victims.status_code == 200, victims.text
        move_to(s, first(victims.json(), "00080018"), state)
        before = creates(s)

        taken = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        assert taken.status_code == 409, taken.text
        assert taken.json()["error"] == UID_IN_USE  # the same answer whatever the state
        for name in STATES:
            assert name not in taken.text
        assert creates(s) == before  # nothing reached the PACS
        assert len(s.ups.workitems) == 1

        # The victim's own study stays theirs: a clinician re-creating the workitem is refused only by an active one.
        again = await s.create(body(profile, VICTIM))
        if state in (SCHEDULED, IN_PROGRESS):
            assert again.status_code == 409, again.text
            assert again.json()["error"]["details"] == {"StudyInstanceUID": STUDY, "state": state}
        else:
            assert again.status_code == 200, again.text


async def test_a_clinician_cannot_file_a_second_patient_under_a_study_either(profile: str) -> None:
    async with stack(profile) as s:
        victims = await s.create(body(profile, VICTIM))
        s.ups.complete(first(victims.json(), "00080018"))
        mixed = await s.create(body(profile, ATTACKER))
        assert mixed.status_code == 409, mixed.text
        assert mixed.json()["error"] == UID_IN_USE
        assert len(s.ups.workitems) == 1


async def test_a_study_whose_images_are_another_patients_takes_no_workitem_for_anyone_else(profile: str) -> None:
    async with stack(profile) as s:
        s.ups.studies[STUDY] = VICTIM  # the images, stored in the archive behind the same root
        taken = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        assert taken.status_code == 409, taken.text
        assert taken.json()["error"] == UID_IN_USE  # the same answer as for another patient's workitem
        asked = [query for method, path, query in s.ups.requests if method == "GET" and path == s.ups.studies_path]
        assert len(asked) == 1
        assert STUDY in asked[0]
        assert s.ups.workitems == {}
        assert (await s.create(body(profile, VICTIM))).status_code == 200  # the images' own patient


async def test_another_patients_workitem_behind_a_page_of_the_callers_own_is_found(profile: str) -> None:
    async with stack(profile) as s:
        own = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        assert own.status_code == 200, own.text
        uid = first(own.json(), "00080018")
        s.ups.cancel(uid)
        copies(s, uid, 250, state=CANCELED)  # more than one upstream page (200) of the caller's own
        copies(s, uid, 1, state=CANCELED, patient_id=VICTIM)
        taken = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        assert taken.status_code == 409, taken.text
        assert taken.json()["error"] == UID_IN_USE


async def test_a_study_with_more_workitems_than_the_gateway_reads_fails_closed(profile: str) -> None:
    async with stack(profile) as s:
        own = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        uid = first(own.json(), "00080018")
        s.ups.cancel(uid)
        copies(s, uid, STUDY_CAP, state=CANCELED)  # another patient's could be the next one
        before = creates(s)
        refused = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        assert refused.status_code == 409, refused.text
        assert "state" not in refused.json()["error"]["details"]
        assert creates(s) == before


async def test_cancelled_workitems_neither_hide_the_scheduled_one_nor_let_a_second_in(profile: str) -> None:
    async with stack(profile) as s:
        first_one = await s.create(body(profile, VICTIM))
        uid = first(first_one.json(), "00080018")
        s.ups.cancel(uid)
        copies(s, uid, 250, state=CANCELED)  # as 250 create-then-DELETE rounds leave them
        scheduled = await s.create(body(profile, VICTIM))
        assert scheduled.status_code == 200, scheduled.text
        second = await s.create(body(profile, VICTIM))
        assert second.status_code == 409, second.text
        assert second.json()["error"]["details"] == {"StudyInstanceUID": STUDY, "state": SCHEDULED}

        deleted = await s.client.delete(f"/workitems/{STUDY}", headers=clinician())
        assert deleted.status_code == 204, deleted.text
        assert s.ups.state(first(scheduled.json(), "00080018")) == CANCELED
        assert (await s.client.delete(f"/workitems/{STUDY}", headers=clinician())).status_code == 404


async def test_a_patient_cannot_delete_a_workitem_of_another_patient_whose_id_differs_by_unicode_space(
    profile: str,
) -> None:
    async with stack(profile) as s:
        for index, stored_id in enumerate(("ATT-1\u00a0", "ATT-1\u3000", "\u2003ATT-1")):
            study = f"{STUDY}.{index}"
            created = await s.create(seed(profile, PatientID="SOMEONE", StudyInstanceUID=study))
            uid = first(created.json(), "00080018")
            s.ups.workitems[uid]["00100020"] = {"vr": "LO", "Value": [stored_id]}  # filed by another system
            hidden = await s.client.delete(f"/workitems/{study}", headers=patient(ATTACKER))
            assert hidden.status_code == 404, (stored_id, hidden.text)
            assert s.ups.state(uid) == SCHEDULED
            taken = await s.create(seed(profile, PatientID=ATTACKER, StudyInstanceUID=study),
                                   headers=patient(ATTACKER))
            assert taken.status_code == 409, taken.text
            assert taken.json()["error"]["details"] == {"StudyInstanceUID": study, "reason": "uid_in_use"}


async def test_a_stored_patient_id_with_its_one_pad_space_is_still_that_patients(profile: str) -> None:
    async with stack(profile) as s:
        created = await s.create(body(profile, ATTACKER + " "), headers=patient(ATTACKER))
        assert created.status_code == 200, created.text
        uid = first(created.json(), "00080018")
        assert s.ups.workitems[uid]["00100020"]["Value"] == [ATTACKER]  # the pad space is not part of the ID
        s.ups.workitems[uid]["00100020"] = {"vr": "LO", "Value": [ATTACKER + " "]}  # a PACS that keeps padding
        again = await s.create(body(profile, ATTACKER), headers=patient(ATTACKER))
        assert again.status_code == 409, again.text
        assert again.json()["error"]["details"] == {"StudyInstanceUID": STUDY, "state": SCHEDULED}  # their own
        assert (await s.client.delete(f"/workitems/{STUDY}", headers=patient(ATTACKER))).status_code == 204
