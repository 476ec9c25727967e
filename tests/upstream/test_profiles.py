"""Each upstream's query dialect, checked on the wire and, for Orthanc, against the real server."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.components import upstream_client
from gateway.dicom.media import DICOM_JSON
from gateway.ops.metrics import Metrics
from gateway.settings import PacsProfileName
from gateway.upstream.client import UpstreamClient
from tests.conftest import make_settings


def client_for(profile: PacsProfileName, url: str) -> UpstreamClient:
    return upstream_client(make_settings(pacs_service_url=url, pacs_profile=profile.value), Metrics())


def test_orthanc_gets_qido_characters_literally_and_includefield_repeated() -> None:
    url = client_for(PacsProfileName.ORTHANC, "http://pacs/dicom-web").url(
        "studies",
        [("PatientName", "DOE^J*"), ("PatientID", "PID00?"), ("StudyDate", "20200101-20201231"),
         ("ModalitiesInStudy", "CT,MR"), ("includefield", "StudyDescription,00081030"), ("x", "a b&c")],
    )
    assert url.raw_path_qs.encode() == (
        b"/dicom-web/studies?PatientName=DOE^J*&PatientID=PID00?&StudyDate=20200101-20201231"
        b"&ModalitiesInStudy=CT,MR&x=a%20b%26c&includefield=StudyDescription&includefield=00081030"
    )


def test_standard_upstream_gets_rfc3986_escapes() -> None:
    url = client_for(PacsProfileName.STANDARD, "http://pacs/dicom-web/").url(
        "studies", [("PatientName", "DOE^J*"), ("PatientID", "PID00?")]
    )
    assert url.raw_path_qs == "/dicom-web/studies?PatientName=DOE%5EJ*&PatientID=PID00%3F"


@pytest.mark.parametrize(
    ("params", "expected_patients"),
    [
        ([("PatientID", "1CT1")], {"1CT1"}),
        ([("PatientName", "CompressedSamples^CT1"), ("PatientID", "1CT1")], {"1CT1"}),  # `^` arrives literally
        ([("PatientID", "1CT?")], {"1CT1"}),  # `?` wildcard
        ([("PatientID", "1CT1,4MR1")], {"1CT1", "4MR1"}),  # `,` list
    ],
)
async def test_orthanc_matches_what_the_profile_sends(
    samples_loaded: str, params: list[tuple[str, str]], expected_patients: set[str]
) -> None:
    async with client_for(PacsProfileName.ORTHANC, samples_loaded) as upstream:
        response = await upstream.request("GET", "studies", operation="test", params=params,
                                          headers={"Accept": DICOM_JSON})
    studies: list[dict[str, Any]] = response.json()
    assert {study["00100020"]["Value"][0] for study in studies} == expected_patients


async def test_orthanc_returns_each_repeated_includefield(samples_loaded: str) -> None:
    async with client_for(PacsProfileName.ORTHANC, samples_loaded) as upstream:
        response = await upstream.request(
            "GET", "studies", operation="test", headers={"Accept": DICOM_JSON},
            params=[("PatientID", "1CT1"), ("includefield", "00081030,00200010")],
        )
    [study] = response.json()
    assert "00081030" in study  # StudyDescription: not a default QIDO attribute, so includefield worked
