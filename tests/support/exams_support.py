"""Shared pieces of the /exams tests: the gateway in front of the real Orthanc, tokens per role, uploads."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import OctKey

from gateway.app import create_app
from tests.conftest import make_settings, running
from tests.support.dicom_factory import Instance

SECRET = "exams-tests-shared-secret-0123456789abcdef"
PUBLIC_BASE_URL = "https://gateway.example.org"


# Long enough for the whole suite: some modules mint their tokens once, at collection, and the suite takes 15-20
# minutes on a slow hour of these machines (a 600 s token expired mid-run).
TOKEN_LIFETIME_S = 4 * 3600


def token(*roles: str, patient_id: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": "tester", "exp": int(time.time()) + TOKEN_LIFETIME_S, "roles": list(roles)}
    if patient_id is not None:
        claims["patient_id"] = patient_id
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(SECRET))


def clinician() -> dict[str, str]:
    return {"Authorization": f"Bearer {token('clinician')}"}


def patient(patient_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token('patient', patient_id=patient_id)}"}


def new_patient_id(prefix: str = "PAT") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12].upper()}"


@asynccontextmanager
async def gateway(dicomweb_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    values: dict[str, Any] = {
        "pacs_service_url": dicomweb_url, "pacs_profile": "orthanc", "auth_mode": "jwt", "auth_jwt_secret": SECRET,
        "public_base_url": PUBLIC_BASE_URL,
    }
    values.update(settings)
    async with running(create_app(make_settings(**values))) as client:
        yield client


@dataclass
class Exams:
    """Calls to the gateway's /exams API as a given caller."""

    client: httpx.AsyncClient

    async def upload(self, *instances: Instance, headers: dict[str, str] | None = None) -> httpx.Response:
        files = [("file", (f"{i.sop_uid}.dcm", i.data, "application/dicom")) for i in instances]
        return await self.client.post("/exams", files=files, headers=headers or clinician())

    async def studies(self, patient_id: str, params: dict[str, str] | None = None, *,
                      headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get("/exams/studies", params={"PatientId": patient_id, **(params or {})},
                                     headers=headers or clinician())

    async def series(self, study: str, patient_id: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(f"/exams/studies/{study}/series", params={"PatientId": patient_id},
                                     headers=headers or clinician())

    async def instances(self, study: str, series: str, patient_id: str, *,
                        headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(f"/exams/studies/{study}/series/{series}/instances",
                                     params={"PatientId": patient_id}, headers=headers or clinician())

    async def file(self, instance: Instance, *, patient_id: str | None = None, file_type: str = "application/dicom",
                   headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(
            f"/exams/studies/{instance.study_uid}/series/{instance.series_uid}/instance/{instance.sop_uid}",
            params={"PatientId": patient_id or instance.patient_id, "fileType": file_type, **(params or {})},
            headers=headers or clinician(),
        )


def values(datasets: list[dict[str, Any]], tag: str) -> list[Any]:
    return [ds[tag]["Value"][0] for ds in datasets if "Value" in ds.get(tag, {})]


def error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"code", "message", "details"}
    if code is not None:
        assert body["code"] == code, body
    return body
