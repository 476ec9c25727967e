"""Gateways for the contract suite: real `dicom-gateway serve` processes, reached by the real curl.

Two ways to run every example: `AUTH_MODE=none` (the product the page describes had no authentication of its own:
the example is sent exactly as printed) and `AUTH_MODE=jwt` (as deployed: the example plus an `Authorization`
header for a caller with the role the endpoint needs, the one thing the page does not say).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import gateway_env
from tests.contract import curl
from tests.support.dicom_factory import Instance, generated, write
from tests.support.exams_support import SECRET, token
from tests.support.orthanc import Orthanc
from tests.support.processes import GatewayProcess
from tests.support.receivers import Receiver, receivers
from tests.support.servers import serve
from tests.support.ups_simulator import UpsSimulator

AUTH_MODES = ["none", "jwt"]
UID_ROOT = "1.2.826.0.1.3680043.10.777"


@dataclass
class Deployment:
    url: str
    auth_mode: str
    receiver: Receiver | None = None
    ups: UpsSimulator | None = None

    def headers(self, *roles: str, patient_id: str | None = None) -> dict[str, str]:
        """What a caller with these roles adds to the page's example: nothing without authentication."""
        if self.auth_mode == "none":
            return {}
        return {"Authorization": f"Bearer {token(*roles, patient_id=patient_id)}"}

    def send(self, command: str, substitutions: Mapping[str, str] | None = None, *roles: str,
             patient_id: str | None = None) -> curl.Answer:
        return curl.run(command, self.url, substitutions, self.headers(*roles, patient_id=patient_id))


def _settings(auth_mode: str, work: Path, **settings: str) -> dict[str, str]:
    values = {"auth_mode": auth_mode, "database_url": f"sqlite:///{work / 'gateway.db'}", "log_level": "warning",
              "dicom_uid_root": UID_ROOT, "viewer_token_secret": secrets.token_urlsafe(32),
              "public_base_url": "https://gateway.example.org", **settings}
    if auth_mode == "jwt":
        values["auth_jwt_secret"] = SECRET
    return gateway_env(**values)


@pytest.fixture(scope="module", params=AUTH_MODES)
def exams_gateway(request: pytest.FixtureRequest, orthanc: Orthanc,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The gateway in front of the session's Orthanc, a callback subscriber listening."""
    work = tmp_path_factory.mktemp(f"contract-exams-{request.param}")
    with receivers(Receiver()) as (receiver,):
        env = _settings(request.param, work, pacs_service_url=orthanc.dicomweb_url, pacs_profile="orthanc",
                        callback_urls=receiver.url, callback_backoff_base_s="0.2")
        with GatewayProcess(env, work / "gateway.log") as gateway:
            yield Deployment(gateway.url, request.param, receiver=receiver)


@pytest.fixture(scope="module", params=[(profile, mode) for profile in ("azure", "dcm4chee", "standard")
                                        for mode in AUTH_MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def worklist_gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Deployment]:
    """The gateway in front of the UPS-RS simulator, one of each real server's profiles."""
    profile, mode = request.param
    work = tmp_path_factory.mktemp(f"contract-worklist-{profile}-{mode}")
    simulator = UpsSimulator(profile)
    with serve(simulator.app) as server:
        root = server.url + simulator.base_path.removesuffix("/workitems")
        env = _settings(mode, work, pacs_service_url=root, pacs_profile=profile)
        with GatewayProcess(env, work / "gateway.log") as gateway:
            yield Deployment(gateway.url, mode, ups=simulator)


@dataclass(frozen=True)
class StoredExam:
    instance: Instance
    path: Path  # the file, where the upload example's `/path/to/dicom/file.dcm` points

    @property
    def placeholders(self) -> dict[str, str]:
        """The page's placeholders in the retrieval and token examples, for this exam."""
        return {"STUDY_UID": self.instance.study_uid, "SERIES_UID": self.instance.series_uid,
                "INSTANCE_UID": self.instance.sop_uid, "{patientID}": self.instance.patient_id}


PAGE_PATIENT = "123456789"  # the PatientID the page's search examples ask for


@pytest.fixture(scope="module")
def stored_exam(exams_gateway: Deployment, tmp_path_factory: pytest.TempPathFactory) -> StoredExam:
    """An exam of the page's patient, stored through the gateway before the examples that read it run."""
    instance = generated(PAGE_PATIENT, rows=64, columns=48)
    path = write(instance, tmp_path_factory.mktemp("exam"), "file.dcm")
    response = httpx.post(f"{exams_gateway.url}/exams", files=[("file", ("file.dcm", instance.data))],
                          headers=exams_gateway.headers("clinician"), timeout=30)
    assert response.status_code == 200, response.text
    return StoredExam(instance, path)
