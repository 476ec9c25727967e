"""GET /exams/studies, .../series, .../instances against the real Orthanc: contract and scoping attacks (issue 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.upstream.orthanc import orthanc_id
from tests.callbacks.test_callbacks import stow_direct
from tests.support.dicom_factory import Instance, generated, new_uid
from tests.support.exams_support import (
    PUBLIC_BASE_URL,
    Exams,
    clinician,
    error,
    gateway,
    new_patient_id,
    patient,
    token,
    values,
)
from tests.support.recorder import RecordingProxy


@dataclass
class Population:
    """Three patients whose IDs are near each other, so any widening of a match would show."""

    prefix: str
    alice: str
    alice_lower: str  # Orthanc matches case-insensitively by default: the exact filter must keep these apart
    bob: str
    spaced: str  # a space cannot be sent to Orthanc; the gateway sends `?` and filters exactly
    spaced_twin: str
    alice_ct: Instance
    alice_mr: Instance
    alice_ct2: Instance
    bob_ct: Instance


@pytest.fixture(scope="module")
async def population(orthanc_url: str) -> Population:
    prefix = new_patient_id("POP")
    alice, bob = f"{prefix}-ALICE", f"{prefix}-BOB"
    study = new_uid()
    series = new_uid()
    p = Population(
        prefix=prefix, alice=alice, alice_lower=alice.lower(), bob=bob,
        spaced=f"{prefix} SPACE", spaced_twin=f"{prefix}XSPACE",
        alice_ct=generated(alice, study_uid=study, series_uid=series, accession="A-CT", study_date="20230310",
                           modality="CT", description="Chest CT"),
        alice_ct2=generated(alice, study_uid=study, series_uid=series, accession="A-CT", study_date="20230310"),
        alice_mr=generated(alice, accession="A-MR", study_date="20240620", modality="MR", description="Knee MR"),
        bob_ct=generated(bob, accession="B-CT", study_date="20230310"),
    )
    async with gateway(orthanc_url) as client:
        exams = Exams(client)
        response = await exams.upload(p.alice_ct, p.alice_ct2, p.alice_mr, p.bob_ct, generated(p.alice_lower),
                                      generated(p.spaced), generated(p.spaced_twin))
        assert response.status_code == 200, response.text
    return p


@pytest.fixture
async def exams(orthanc_url: str) -> AsyncIterator[Exams]:
    async with gateway(orthanc_url) as client:
        yield Exams(client)


def patient_ids(response_json: list[dict[str, Any]]) -> set[str]:
    return set(values(response_json, "00100020"))


async def test_studies_of_a_patient(exams: Exams, population: Population, orthanc_url: str) -> None:
    # What the upstream itself answers for this PatientID includes a case-variant patient ...
    async with httpx.AsyncClient() as direct:
        upstream = (await direct.get(f"{orthanc_url}/studies?PatientID={population.alice}")).json()
    assert patient_ids(upstream) == {population.alice, population.alice_lower}
    # ... which the gateway's exact filter removes.
    response = await exams.studies(population.alice)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    found = response.json()
    assert sorted(values(found, "0020000D")) == sorted([population.alice_ct.study_uid, population.alice_mr.study_uid])
    assert patient_ids(found) == {population.alice}  # not alice_lower, which Orthanc also matched


async def test_unknown_patient_gets_an_empty_list(exams: Exams) -> None:
    response = await exams.studies(new_patient_id())
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize("spelling", ["PatientId", "patientId", "patientID", "PatientID"])
async def test_every_documented_spelling_of_patient_id(exams: Exams, population: Population, spelling: str) -> None:
    response = await exams.client.get("/exams/studies", params={spelling: population.bob}, headers=clinician())
    assert response.status_code == 200
    assert values(response.json(), "0020000D") == [population.bob_ct.study_uid]


async def test_patient_id_is_mandatory_and_not_empty(exams: Exams, population: Population) -> None:
    assert error(await exams.client.get("/exams/studies", headers=clinician()), 400)["details"] == {
        "parameter": "PatientId"}
    error(await exams.studies(""), 400)
    error(await exams.studies("   "), 400)
    conflicting = await exams.client.get("/exams/studies", params={"PatientId": population.alice,
                                                                   "patientID": population.bob}, headers=clinician())
    error(conflicting, 400)


async def test_patient_id_with_a_space_matches_exactly(exams: Exams, population: Population,
                                                      recorder: tuple[RecordingProxy, str]) -> None:
    proxy, url = recorder
    async with gateway(url) as client:
        assert (await Exams(client).studies(population.spaced)).status_code == 200
    assert f"PatientID={population.prefix}?SPACE" in proxy.seen[0].query  # Orthanc cannot receive a space
    response = await exams.studies(population.spaced)
    assert response.status_code == 200
    assert patient_ids(response.json()) == {population.spaced}  # not the twin that `?` also matched upstream


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"StudyDate": "20230310"}, {"alice_ct"}),
        ({"StudyDate": "20230101-20231231"}, {"alice_ct"}),
        ({"StudyDate": "20240101-"}, {"alice_mr"}),
        ({"StudyDate": "-20231231"}, {"alice_ct"}),
        ({"ModalitiesInStudy": "MR"}, {"alice_mr"}),
        ({"AccessionNumber": "A-CT"}, {"alice_ct"}),
        ({"limit": "1", "offset": "0"}, 1),
        ({"limit": "1", "offset": "1"}, 1),
        ({"offset": "5"}, set()),
    ],
)
async def test_filters(exams: Exams, population: Population, params: dict[str, str],
                       expected: set[str] | int) -> None:
    response = await exams.studies(population.alice, params)
    assert response.status_code == 200, response.text
    found = values(response.json(), "0020000D")
    if isinstance(expected, int):
        assert len(found) == expected
    else:
        assert sorted(found) == sorted(getattr(population, name).study_uid for name in expected)


async def test_study_instance_uid_filter_and_includefield(exams: Exams, population: Population) -> None:
    response = await exams.studies(population.alice, {"StudyInstanceUID": population.alice_mr.study_uid,
                                                      "includefield": "StudyDescription"})
    [study] = response.json()
    assert study["00081030"]["Value"] == ["Knee MR"]  # not a default QIDO attribute


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"StudyDate": "2023-03-10"}, "StudyDate"),
        ({"StudyDate": "20231310"}, "StudyDate"),
        ({"StudyDate": "20240101-20230101"}, "StudyDate"),
        ({"StudyDate": "-"}, "StudyDate"),
        ({"ModalitiesInStudy": "ct"}, "ModalitiesInStudy"),
        ({"AccessionNumber": "A*"}, "AccessionNumber"),
        ({"AccessionNumber": "X" * 17}, "AccessionNumber"),
        ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
        ({"includefield": "NotAKeyword"}, "includefield"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # a digit to str.isdigit, not to int()
        ({"offset": "9" * 5000}, "offset"),  # more digits than int() converts
        ({"offset": "-1"}, "offset"),
        ({"PatientName": "DOE*"}, "PatientName"),
    ],
)
async def test_bad_values_are_400_naming_the_parameter(exams: Exams, population: Population,
                                                       params: dict[str, str], parameter: str) -> None:
    body = error(await exams.studies(population.alice, params), 400, "bad_request")
    assert body["details"]["parameter"] == parameter


async def test_series_and_instances_of_a_study(exams: Exams, population: Population) -> None:
    ct = population.alice_ct
    series = await exams.series(ct.study_uid, population.alice)
    assert series.status_code == 200
    assert values(series.json(), "0020000E") == [ct.series_uid]
    instances = await exams.instances(ct.study_uid, ct.series_uid, population.alice)
    assert instances.status_code == 200
    assert sorted(values(instances.json(), "00080018")) == sorted([ct.sop_uid, population.alice_ct2.sop_uid])


async def test_another_patients_study_is_404_like_a_missing_one(exams: Exams, population: Population) -> None:
    bob = population.bob_ct
    foreign = error(await exams.series(bob.study_uid, population.alice), 404, "not_found")
    missing = error(await exams.series(new_uid(), population.alice), 404, "not_found")
    assert foreign["message"] == missing["message"]
    assert set(foreign["details"]) == set(missing["details"])
    foreign = error(await exams.instances(bob.study_uid, bob.series_uid, population.alice), 404)
    missing = error(await exams.instances(bob.study_uid, new_uid(), population.alice), 404)
    assert foreign["message"] == missing["message"]


async def test_a_study_uid_shared_with_another_patient_shows_only_the_callers_series(
    exams: Exams, population: Population, orthanc_url: str
) -> None:
    """Another patient's data filed under Alice's StudyInstanceUID (possible in a PACS, from data stored around the
    gateway, which refuses such uploads): Alice never sees it."""
    intruder = generated(f"{population.prefix}-EVE", study_uid=population.alice_ct.study_uid)
    error(await exams.upload(intruder, headers=patient(intruder.patient_id)), 409, "conflict")
    stow_direct(orthanc_url, [intruder.data])
    series = (await exams.series(population.alice_ct.study_uid, population.alice)).json()
    assert values(series, "0020000E") == [population.alice_ct.series_uid]
    assert patient_ids(series) == {population.alice}
    error(await exams.instances(intruder.study_uid, intruder.series_uid, population.alice), 404)


@pytest.mark.parametrize("widening", ["*", "POP*", "?", "{alice},{bob}", "{alice}\\{bob}", "{prefix}*", "*ALICE"])
async def test_wildcards_lists_and_multiple_values_never_reach_the_upstream(
    recorder: tuple[RecordingProxy, str], population: Population, widening: str
) -> None:
    proxy, url = recorder
    value = widening.format(alice=population.alice, bob=population.bob, prefix=population.prefix)
    async with gateway(url) as client:
        exams = Exams(client)
        error(await exams.studies(value), 400, "bad_request")
        error(await exams.series(population.alice_ct.study_uid, value), 400)
        error(await exams.file(population.alice_ct, patient_id=value), 400)
    assert proxy.seen == []


async def test_patient_sees_own_studies_and_is_refused_anothers(
    recorder: tuple[RecordingProxy, str], population: Population
) -> None:
    proxy, url = recorder
    async with gateway(url) as client:
        exams = Exams(client)
        own = await exams.studies(population.bob, headers=patient(population.bob))
        assert values(own.json(), "0020000D") == [population.bob_ct.study_uid]
        proxy.seen.clear()
        as_bob = patient(population.bob)
        error(await exams.studies(population.alice, headers=as_bob), 403, "forbidden")
        error(await exams.studies(population.alice_lower, headers=as_bob), 403)
        error(await exams.series(population.alice_ct.study_uid, population.alice, headers=as_bob), 403)
        error(await exams.instances(population.alice_ct.study_uid, population.alice_ct.series_uid,
                                    population.alice, headers=as_bob), 403)
        error(await exams.file(population.alice_ct, headers=as_bob), 403)
        # Bob naming himself but Alice's study in the path: 404, and the upstream is only asked about Bob.
        error(await exams.series(population.alice_ct.study_uid, population.bob, headers=as_bob), 404)
    assert all(population.alice not in target and population.alice_lower not in target
               for target in proxy.targets())
    # Each question names Bob: a QIDO query with his PatientID, or Orthanc's id of (Bob, that study).
    bobs_copy_of_the_study = f"/studies/{orthanc_id(population.bob, population.alice_ct.study_uid)}"
    assert all(f"PatientID={population.bob}" in seen.query or seen.path == bobs_copy_of_the_study
               for seen in proxy.seen)


async def test_invalid_path_uids_are_400_before_anything_goes_upstream(
    recorder: tuple[RecordingProxy, str], population: Population
) -> None:
    proxy, url = recorder
    async with gateway(url) as client:
        for path in ["/exams/studies/1.2.abc/series", "/exams/studies/1.02/series/1.2/instances",
                     f"/exams/studies/{'1' * 65}/series", "/exams/studies/1.2/series/1.3/instance/*"]:
            response = await client.get(path, params={"PatientId": population.alice, "fileType": "image/jpeg"},
                                        headers=clinician())
            error(response, 400, "bad_request")
    assert proxy.seen == []


async def test_search_needs_a_token_with_an_exams_role(exams: Exams, population: Population) -> None:
    error(await exams.client.get("/exams/studies", params={"PatientId": population.alice}), 401)
    pacs = {"Authorization": f"Bearer {token('pacs')}"}
    error(await exams.studies(population.alice, headers=pacs), 403)


async def test_search_answers_never_name_the_pacs_and_their_urls_work(
    exams: Exams, population: Population, orthanc_url: str
) -> None:
    ct = population.alice_ct
    answers = [
        await exams.studies(population.alice),
        await exams.series(ct.study_uid, population.alice),
        await exams.instances(ct.study_uid, ct.series_uid, population.alice),
    ]
    pacs = httpx.URL(orthanc_url)
    for answer in answers:
        assert answer.status_code == 200
        assert f"{pacs.host}:{pacs.port}" not in answer.text
        for dataset in answer.json():
            url = dataset["00081190"]["Value"][0]
            assert url.startswith(f"{PUBLIC_BASE_URL}/exams/studies/")
            followed = await exams.client.get(url.removeprefix(PUBLIC_BASE_URL), headers=clinician())
            assert followed.status_code == 200, url


async def test_pages_hold_only_the_patients_studies_even_when_the_upstream_matches_loosely(
    exams: Exams, population: Population
) -> None:
    pages = [values((await exams.studies(population.alice, {"limit": "1", "offset": str(offset)})).json(),
                    "0020000D") for offset in range(4)]
    assert [len(page) for page in pages] == [1, 1, 0, 0]
    assert sorted(pages[0] + pages[1]) == sorted([population.alice_ct.study_uid, population.alice_mr.study_uid])


async def test_a_non_ascii_patient_id_is_found(exams: Exams) -> None:
    """Orthanc drops non-ASCII characters when it normalises identifiers; the gateway sends `*` for them."""
    pid = f"M\u00dcLLER-{new_patient_id()}"
    instance = generated(pid)
    assert (await exams.upload(instance)).status_code == 200
    studies = (await exams.studies(pid)).json()
    assert values(studies, "0020000D") == [instance.study_uid]
    assert (await exams.file(instance, file_type="image/jpeg")).status_code == 200
