"""Token claims of unexpected types or ambiguous values (issue 10, class 6): 403 naming the claim, never 500.

The patient claim is the value the gateway matches the PACS's PatientID against, so it has one reading only: a
string of 1-64 printable characters, no leading or trailing space, none of the matching characters `* ? \\ ,`.
Tests go through the real app in front of the real Orthanc (a recording proxy in between) and assert that a refused
token never reaches the PACS.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from tests.conftest import AppClient
from tests.support.exams_support import SECRET
from tests.support.recorder import RecordingProxy


def signed(**claims: Any) -> dict[str, str]:
    body = {"sub": "tester", "exp": int(time.time()) + 600, **claims}
    return {"Authorization": f"Bearer {jwt.encode({'alg': 'HS256'}, body, OctKey.import_key(SECRET))}"}


@pytest.fixture
async def gateway(app_client: AppClient, recorder: tuple[RecordingProxy, str]) -> AsyncIterator[httpx.AsyncClient]:
    _, dicomweb_url = recorder
    async with app_client(pacs_service_url=dicomweb_url, pacs_profile="orthanc", auth_mode="jwt",
                          auth_jwt_secret=SECRET) as client:
        yield client


def assert_claim_refused(answer: httpx.Response, claim: str) -> None:
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "forbidden"
    assert error["details"]["claim"] == claim


ODD_ROLES = [[["clinician"]], [{"role": "clinician"}], ["clinician", ["pacs"]], ["clinician", 7], {"clinician": True},
             7, True, ["clinician", None]]


@pytest.mark.parametrize("roles", ODD_ROLES)
async def test_a_roles_claim_of_an_unexpected_type_is_403_naming_it(
    gateway: httpx.AsyncClient, recorder: tuple[RecordingProxy, str], roles: Any
) -> None:
    proxy, _ = recorder
    for path in ("/uid", "/dicomweb/studies", "/exams/studies?PatientId=P1", "/new-exam-callback/events"):
        assert_claim_refused(await gateway.get(path, headers=signed(roles=roles, patient_id="P1")), "roles")
    assert proxy.seen == []


async def test_a_nested_roles_claim_of_an_unexpected_type_is_403_naming_it(app_client: AppClient) -> None:
    async with app_client(auth_mode="jwt", auth_jwt_secret=SECRET, auth_roles_claim="realm_access.roles") as client:
        headers = signed(realm_access={"roles": [["clinician"]]})
        assert_claim_refused(await client.get("/uid", headers=headers), "realm_access.roles")
        ok = await client.get("/uid", headers=signed(realm_access={"roles": ["offline_access", "clinician"]}))
        assert ok.status_code == 200


@pytest.mark.parametrize("patient_id", [
    7, 1.5, True, ["P1"], {"id": "P1"},  # not a string
    "", "x" * 65,  # not 1-64 characters
    " P1", "P1 ", "\tP1",  # leading or trailing space
    "P\x00", "P\x1b[2J", "P\n1", "P\x7f", "P\u202e1", "P\u00a01",  # control, format or separator characters
    "*", "P*", "P?", "A\\B", "A,B",  # matching characters
])
async def test_a_patient_claim_without_one_reading_is_403_naming_it_and_reaches_no_pacs(
    gateway: httpx.AsyncClient, recorder: tuple[RecordingProxy, str], patient_id: Any
) -> None:
    proxy, _ = recorder
    headers = signed(roles=["patient"], patient_id=patient_id)
    for path in ("/uid", "/dicomweb/studies", "/exams/studies?PatientId=*", "/token?studyUID=1.2.3"):
        assert_claim_refused(await gateway.get(path, headers=headers), "patient_id")
    assert proxy.seen == []


@pytest.mark.parametrize("patient_id", ["P1", "x" * 64, "MÜLLER^ÉLISE", "A B", "SDJ38WMD1MS01", "1"])
async def test_a_patient_claim_with_one_reading_is_accepted(gateway: httpx.AsyncClient, patient_id: str) -> None:
    answer = await gateway.get("/dicomweb/studies", headers=signed(roles=["patient"], patient_id=patient_id))
    assert answer.status_code == 200, answer.text
    assert answer.json() == []  # nobody with these IDs in the session's Orthanc


async def test_a_missing_patient_claim_still_grants_nothing_patient_scoped(gateway: httpx.AsyncClient) -> None:
    answer = await gateway.get("/uid", headers=signed(roles=["patient"]))
    assert answer.status_code == 403
    assert answer.json()["error"]["details"] == {"required_roles": ["clinician", "pacs", "patient"]}


async def test_a_clinician_token_is_not_refused_for_a_patient_claim_it_does_not_use(
    gateway: httpx.AsyncClient
) -> None:
    # The patient claim is a scope only for the patient role; a clinician's token may carry anything there.
    answer = await gateway.get("/uid", headers=signed(roles=["clinician"], patient_id=["not", "used"]))
    assert answer.status_code == 200
