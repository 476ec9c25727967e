"""`GET /token` and `/dicomweb`: a real DICOMweb client (dicomweb-client) with viewer tokens, against real Orthanc."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from joserfc import jwt
from joserfc.jwk import OctKey
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.viewer.tokens import AUDIENCE, ISSUER
from tests.callbacks.test_callbacks import stow_direct
from tests.conftest import gateway_env, make_settings, running
from tests.support.dicom_factory import generated, new_uid
from tests.support.exams_support import SECRET, token
from tests.support.processes import GatewayProcess
from tests.support.servers import serve

VIEWER_SECRET = "viewer-token-secret-0123456789abcdef"
ORIGIN = "https://viewer.example.org"


@dataclass
class Scene:
    gateway: GatewayProcess
    patient: str
    study_a: str
    series_a: str
    instances_a: list[str]
    multiframe: str
    study_b: str
    series_b: str
    instance_b: str
    other_patient_study: str

    def token(self, study: str, role: str = "patient", headers: dict[str, str] | None = None) -> str:
        answer = httpx.get(f"{self.gateway.url}/token", params={"studyUID": study, "role": role, "user": "dr-x"},
                           headers=headers or {"Authorization": f"Bearer {token('clinician')}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["expiresIn"] == 3600
        return str(answer.json()["token"])

    def client(self, viewer_token: str) -> DICOMwebClient:
        return DICOMwebClient(url=f"{self.gateway.url}/dicomweb", headers={"Authorization": f"Bearer {viewer_token}"})

    def get(self, path: str, viewer_token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if viewer_token is not None:
            headers["Authorization"] = f"Bearer {viewer_token}"
        return httpx.get(f"{self.gateway.url}/dicomweb/{path}", headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def scene(orthanc_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    patient = f"VIEW-{uuid.uuid4().hex[:8].upper()}"
    study_a, series_a, study_b, series_b = new_uid(), new_uid(), new_uid(), new_uid()
    singles = [generated(patient, study_uid=study_a, series_uid=series_a, rows=64, columns=64) for _ in range(2)]
    multi = generated(patient, study_uid=study_a, series_uid=series_a, rows=32, columns=32, frames=3)
    other_b = generated(patient, study_uid=study_b, series_uid=series_b)
    stranger = generated(f"OTHER-{uuid.uuid4().hex[:6]}")
    stow_direct(orthanc_url, [i.data for i in (*singles, multi, other_b, stranger)])
    port_dir = tmp_path_factory.mktemp("dicomweb")
    env = gateway_env(pacs_service_url=orthanc_url, pacs_profile="orthanc", auth_mode="jwt", auth_jwt_secret=SECRET,
                      viewer_token_secret=VIEWER_SECRET, cors_allow_origins=ORIGIN, log_level="warning")
    process = GatewayProcess(env, port_dir / "gw.log")
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{process.port}"
    process.start()
    try:
        yield Scene(process, patient, study_a, series_a, [i.sop_uid for i in singles], multi.sop_uid, study_b,
                    series_b, other_b.sop_uid, stranger.study_uid)
    finally:
        process.stop()


# --- a real DICOMweb client with a viewer token ------------------------------------------------------------------


def test_a_viewer_token_opens_its_study_to_a_real_dicomweb_client(scene: Scene) -> None:
    client = scene.client(scene.token(scene.study_a))
    studies = client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [scene.study_a]  # not study B of the same patient
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies(
        search_filters={"PatientID": scene.patient})] == [scene.study_a]
    series = client.search_for_series(scene.study_a)
    assert [s["0020000E"]["Value"][0] for s in series] == [scene.series_a]
    instances = client.search_for_instances(scene.study_a, scene.series_a)
    assert len(instances) == 3
    for dataset in instances:
        for url in dataset.get("00081190", {}).get("Value", []):
            assert url.startswith(f"{scene.gateway.url}/dicomweb/studies/")  # never the PACS's own address

    metadata = client.retrieve_study_metadata(scene.study_a)
    assert len(metadata) == 3
    bulk = [v["BulkDataURI"] for ds in metadata for v in ds.values() if isinstance(v, dict) and "BulkDataURI" in v]
    assert bulk
    assert all(url.startswith(f"{scene.gateway.url}/dicomweb/studies/{scene.study_a}/") for url in bulk)

    retrieved = client.retrieve_series(scene.study_a, scene.series_a)
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted([*scene.instances_a, scene.multiframe])
    instance = client.retrieve_instance(scene.study_a, scene.series_a, scene.instances_a[0])
    assert instance.PatientID == scene.patient
    frames = client.retrieve_instance_frames(scene.study_a, scene.series_a, scene.multiframe, [1, 3])
    assert [len(f) for f in frames] == [32 * 32 * 2] * 2
    rendered = client.retrieve_instance_frames_rendered(scene.study_a, scene.series_a, scene.multiframe, [2],
                                                        media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(rendered)).format == "JPEG"


def test_everything_outside_the_study_is_not_found(scene: Scene) -> None:
    client = scene.client(scene.token(scene.study_a))
    for call in (
        lambda: client.retrieve_study(scene.study_b),
        lambda: client.retrieve_study_metadata(scene.study_b),
        lambda: client.search_for_series(scene.study_b),
        lambda: client.retrieve_instance(scene.study_b, scene.series_b, scene.instance_b),
        lambda: client.retrieve_instance_rendered(scene.study_b, scene.series_b, scene.instance_b),
        lambda: client.retrieve_study(scene.other_patient_study),
    ):
        with pytest.raises(requests.HTTPError) as refused:
            call()
        assert refused.value.response is not None
        assert refused.value.response.status_code == 404


# --- token abuse ---------------------------------------------------------------------------------------------------


def forged(claims: dict[str, Any], key: bytes = VIEWER_SECRET.encode(), alg: str = "HS256") -> str:
    kid = f"viewer-{OctKey.import_key(VIEWER_SECRET.encode()).thumbprint()[:16]}"  # the gateway's key id
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 600, "jti": "j", "role": "patient"}
    return jwt.encode({"alg": alg, "kid": kid}, {**base, **claims}, OctKey.import_key(key))


def test_abused_tokens_are_refused(scene: Scene) -> None:
    study = f"studies/{scene.study_a}/metadata"
    own = {"study": scene.study_a, "patient": scene.patient}
    assert scene.get(study, forged(own)).status_code == 200  # the forge makes valid tokens with the right key
    expired = forged({**own, "exp": int(time.time()) - 120})
    assert scene.get(study, expired).status_code == 401
    assert scene.get(study, forged(own, key=b"another-key-of-32-bytes-0123456789")).status_code == 401
    header = '{"alg":"none","kid":"' + f"viewer-{OctKey.import_key(VIEWER_SECRET.encode()).thumbprint()[:16]}" + '"}'
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    unsigned = f"{b64(header.encode())}.{b64(json.dumps({**own, 'exp': int(time.time()) + 600}).encode())}."
    assert scene.get(study, unsigned).status_code == 401
    tampered = scene.token(scene.study_a)
    head, payload, signature = tampered.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["study"] = scene.study_b
    assert scene.get(f"studies/{scene.study_b}/metadata",
                      f"{head}.{b64(json.dumps(claims).encode())}.{signature}").status_code == 401
    assert scene.get("studies").status_code == 401  # no token at all


def test_a_token_for_one_study_reaches_no_other_through_paths_or_filters(scene: Scene) -> None:
    viewer = scene.token(scene.study_a)
    for path in (f"studies/{scene.study_b}", f"studies/{scene.study_b}/metadata", f"studies/{scene.study_b}/series",
                 f"studies/{scene.study_b}/series/{scene.series_b}/instances/{scene.instance_b}/rendered"):
        assert scene.get(path, viewer).status_code == 404, path
    for smuggled in (f"{scene.study_a},{scene.study_b}", f"{scene.study_b}"):
        for level in ("studies", "series", "instances"):
            answer = scene.get(level, viewer, params={"StudyInstanceUID": smuggled})
            assert answer.status_code == 200
            assert {ds["0020000D"]["Value"][0] for ds in answer.json()} <= {scene.study_a}, (level, smuggled)
    # UID matching knows no wildcards (PS3.4 §C.2.2.2.4) and lists are comma-separated: refused before the PACS.
    for smuggled in (f"{scene.study_a}\\{scene.study_b}", "*", "1.*"):
        for level in ("studies", "series", "instances"):
            answer = scene.get(level, viewer, params={"StudyInstanceUID": smuggled})
            assert answer.status_code == 400, (level, smuggled)
            assert answer.json()["error"]["details"] == {"parameter": "StudyInstanceUID"}
    assert scene.get("studies", viewer, params={"StudyInstanceUID": scene.study_b}).json() == []
    assert [ds["0020000D"]["Value"][0] for ds in scene.get("studies", viewer, params={
        "StudyInstanceUID": f"{scene.study_b},{scene.study_a}"}).json()] == [scene.study_a]


def test_empty_path_segments_route_like_the_path_without_them_and_keep_the_token_to_its_study(scene: Scene) -> None:
    viewer = scene.token(scene.study_a)
    instance_b = f"studies/{scene.study_b}/series/{scene.series_b}/instances/{scene.instance_b}"
    for path in (f"studies/{scene.study_b}/", f"/studies/{scene.study_b}", f"studies/{scene.study_b}//metadata",
                 f"studies//{scene.study_b}/series/", f"{instance_b}//rendered", f"{instance_b}/frames/1//rendered",
                 f"{instance_b}/"):
        assert scene.get(path, viewer).status_code == 404, path
    searched = scene.get("studies/", viewer)
    assert searched.status_code == 200
    assert [ds["0020000D"]["Value"][0] for ds in searched.json()] == [scene.study_a]
    metadata = scene.get(f"studies/{scene.study_a}//metadata/", viewer)
    assert metadata.status_code == 200
    assert {ds["0020000D"]["Value"][0] for ds in metadata.json()} == {scene.study_a}
    assert len(metadata.json()) == 3


def test_a_token_in_the_query_works_and_two_different_tokens_are_refused(scene: Scene) -> None:
    a, b = scene.token(scene.study_a), scene.token(scene.study_b)
    in_query = scene.get("studies", params={"token": a})
    assert [ds["0020000D"]["Value"][0] for ds in in_query.json()] == [scene.study_a]
    assert scene.get("studies", a, params={"token": a}).status_code == 200  # the same one twice is fine
    assert scene.get("studies", a, params={"token": b}).status_code == 401


def test_patient_tokens_and_token_requests(scene: Scene) -> None:
    mine = {"Authorization": f"Bearer {token('patient', patient_id=scene.patient)}"}
    own = scene.get("studies", headers=dict(mine))
    assert sorted(ds["0020000D"]["Value"][0] for ds in own.json()) == sorted([scene.study_a, scene.study_b])
    assert scene.get(f"studies/{scene.other_patient_study}/metadata", headers=dict(mine)).status_code == 404
    # A patient may ask for a viewer token for their own study, role patient only.
    assert scene.token(scene.study_a, headers=mine)
    refused = httpx.get(f"{scene.gateway.url}/token", params={"studyUID": scene.study_a, "role": "diagnostic"},
                        headers=mine)
    assert refused.status_code == 403
    other = httpx.get(f"{scene.gateway.url}/token", params={"studyUID": scene.other_patient_study}, headers=mine)
    assert other.status_code == 404
    clinician = {"Authorization": f"Bearer {token('clinician')}"}
    for params, status in (({}, 400), ({"studyUID": "1.02"}, 400), ({"studyUID": "1.2.3.4.5.6.7.8.9"}, 404),
                           ({"studyUID": scene.study_a, "role": "admin"}, 400),
                           ({"studyUID": scene.study_a, "patientID": "SOMEONE-ELSE"}, 404)):
        assert httpx.get(f"{scene.gateway.url}/token", params=params, headers=clinician).status_code == status
    assert httpx.get(f"{scene.gateway.url}/token", params={"studyUID": scene.study_a}).status_code == 401


def test_browser_viewers_get_cors_and_cross_origin_images(scene: Scene) -> None:
    preflight = httpx.options(f"{scene.gateway.url}/dicomweb/studies", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,accept"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    viewer = scene.token(scene.study_a)
    rendered = scene.get(f"studies/{scene.study_a}/series/{scene.series_a}/instances/{scene.instances_a[0]}/rendered",
                         viewer, headers={"Origin": ORIGIN, "Accept": "image/*"})
    assert rendered.status_code == 200
    assert rendered.headers["content-type"] == "image/jpeg"
    assert rendered.headers["cross-origin-resource-policy"] == "cross-origin"
    assert rendered.headers["access-control-allow-origin"] == ORIGIN
    single = scene.get(f"studies/{scene.study_a}/series/{scene.series_a}/instances/{scene.instances_a[0]}", viewer,
                       headers={"Accept": "application/dicom"})
    assert single.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(single.content)).SOPInstanceUID == scene.instances_a[0]


# --- STOW-RS with a diagnostic token -----------------------------------------------------------------------------


def test_a_diagnostic_token_stores_into_its_study_and_nowhere_else(scene: Scene) -> None:
    diagnostic = scene.client(scene.token(scene.study_a, role="diagnostic"))
    added = generated(scene.patient, study_uid=scene.study_a, series_uid=new_uid())
    answer = diagnostic.store_instances([pydicom.dcmread(io.BytesIO(added.data))])  # the STOW-RS answer, parsed
    [stored] = answer.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == added.sop_uid
    assert str(stored.RetrieveURL).startswith(f"{scene.gateway.url}/dicomweb/studies/{scene.study_a}")
    assert len(diagnostic.search_for_instances(scene.study_a)) == 4

    def refused(client: DICOMwebClient, instance: Any, study: str | None = None) -> int:
        with pytest.raises(requests.HTTPError) as caught:
            client.store_instances([pydicom.dcmread(io.BytesIO(instance.data))], study_instance_uid=study)
        assert caught.value.response is not None
        return int(caught.value.response.status_code)

    into_b = generated(scene.patient, study_uid=scene.study_b)
    assert refused(diagnostic, into_b) == 403  # a file of another study
    assert refused(diagnostic, into_b, study=scene.study_b) == 404  # another study's path
    stranger = generated("SOMEONE-ELSE", study_uid=scene.study_a)
    assert refused(diagnostic, stranger) == 403  # another patient's file, even in the right study
    read_only = scene.client(scene.token(scene.study_a, role="patient"))
    assert refused(read_only, generated(scene.patient, study_uid=scene.study_a)) == 403
    assert len(diagnostic.search_for_instances(scene.study_a)) == 4  # nothing refused was stored


# --- URLs behind a trusted proxy, and an external token service --------------------------------------------------


async def test_urls_follow_a_trusted_proxy_and_only_a_trusted_one(scene: Scene, orthanc_url: str) -> None:
    base = {"pacs_service_url": orthanc_url, "pacs_profile": "orthanc", "auth_mode": "jwt",
            "auth_jwt_secret": SECRET, "public_base_url": "https://gateway.internal.example"}
    headers = {"Authorization": f"Bearer {token('clinician')}", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "viewer.example.org"}
    path = f"/dicomweb/studies/{scene.study_a}/series"
    async with running(create_app(make_settings(**base, trusted_proxies="127.0.0.1"))) as client:
        answer = await client.get(path, headers=headers)
        [url] = answer.json()[0]["00081190"]["Value"]
        assert url.startswith("https://viewer.example.org/dicomweb/studies/")
        forwarded = await client.get(path, headers={**headers, "Forwarded": 'proto=http;host="pacs.example:8443"'})
        assert forwarded.json()[0]["00081190"]["Value"][0].startswith("http://pacs.example:8443/dicomweb/")
        bad = await client.get(path, headers={**headers, "X-Forwarded-Host": "evil.example/path"})
        assert bad.json()[0]["00081190"]["Value"][0].startswith("https://gateway.internal.example/dicomweb/")
    async with running(create_app(make_settings(**base))) as client:  # nobody trusted: the headers are ignored
        answer = await client.get(path, headers=headers)
        assert answer.json()[0]["00081190"]["Value"][0].startswith("https://gateway.internal.example/dicomweb/")


async def test_an_external_token_service_is_asked_instead(scene: Scene, orthanc_url: str) -> None:
    asked: list[tuple[dict[str, str], str | None]] = []

    async def service(request: Request) -> Response:
        asked.append((dict(request.query_params), request.headers.get("authorization")))
        return JSONResponse({"token": "token-from-the-viewer-service", "expiresIn": 120})

    with serve(Starlette(routes=[Route("/get-token", service)])) as external:
        settings = {"pacs_service_url": orthanc_url, "pacs_profile": "orthanc", "auth_mode": "jwt",
                    "auth_jwt_secret": SECRET, "viewer_get_token_endpoint": f"{external.url}/get-token",
                    "viewer_authorization_token": "service-credential-0123"}
        async with running(create_app(make_settings(**settings))) as client:
            clinician = {"Authorization": f"Bearer {token('clinician')}"}
            answer = await client.get("/token", params={"studyUID": scene.study_a, "user": "dr-x"}, headers=clinician)
            assert answer.json() == {"token": "token-from-the-viewer-service", "expiresIn": 120}
            missing = await client.get("/token", params={"studyUID": "1.2.3.4.5.6.7"}, headers=clinician)
            assert missing.status_code == 404
    assert asked == [({"studyUID": scene.study_a, "patientID": scene.patient, "user": "dr-x", "role": "patient"},
                      "Bearer service-credential-0123")]  # the unknown study was never asked about
