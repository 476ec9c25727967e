"""Upstream failures become the right JSON errors, shown against real faults (acceptance 3 of issue 2).

The exams and DICOMweb routes come with later issues; here a probe route, added to the real app, makes one QIDO-RS
search through the app's own `UpstreamClient`, so the real client, error mapping, handlers and middleware are used.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.dicom.media import DICOM_JSON
from gateway.upstream.client import UpstreamClient
from tests.conftest import make_settings, running
from tests.support.orthanc import Orthanc
from tests.support.servers import raw_tcp_server, serve


@asynccontextmanager
async def probing_client(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(**settings))
    upstream: UpstreamClient = app.state.upstream

    async def probe(request: Request) -> Response:
        response = await upstream.request(
            "GET", "studies", operation="probe", params=[("limit", "1")], headers={"Accept": DICOM_JSON}
        )
        return JSONResponse({"upstream_status": response.status_code, "body": response.json()})

    app.router.routes.append(Route("/probe", probe))
    async with running(app) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


async def test_probe_reaches_real_orthanc(orthanc_url: str) -> None:
    async with probing_client(pacs_service_url=orthanc_url, pacs_profile="orthanc") as client:
        response = await client.get("/probe")
    assert response.status_code == 200
    assert response.json()["upstream_status"] == 200


@pytest.fixture
def stopped_orthanc(tmp_path: Path) -> Orthanc:
    """An Orthanc that was started and stopped: its port is known and nothing listens there."""
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    server.stop()
    return server


async def test_orthanc_stopped_is_502(stopped_orthanc: Orthanc) -> None:
    async with probing_client(pacs_service_url=stopped_orthanc.dicomweb_url) as client:
        error = assert_error(await client.get("/probe"), 502, "upstream_unavailable")
        ready = await client.get("/-/ready")
    assert error["message"] == "could not connect to the PACS"
    assert ready.status_code == 503
    assert ready.json()["error"]["details"]["reason"] == "could not connect to the PACS"


async def test_stalled_upstream_is_504() -> None:
    async with raw_tcp_server("stall") as url, probing_client(
        pacs_service_url=f"{url}/dicom-web", pacs_read_timeout_s=0.5
    ) as client:
        error = assert_error(await client.get("/probe"), 504, "upstream_timeout")
    assert error["details"] == {"operation": "probe", "reason": "ReadTimeout"}


async def test_upstream_dropping_the_connection_is_502() -> None:
    async with raw_tcp_server("drop") as url, probing_client(pacs_service_url=f"{url}/dicom-web") as client:
        error = assert_error(await client.get("/probe"), 502, "upstream_unavailable")
    assert error["details"]["reason"] == "ServerDisconnectedError"


@pytest.fixture(scope="module")
def orthanc_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc-auth"), credentials=("gateway", "s3cret"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_upstream_401_is_502_not_the_callers_401(orthanc_with_auth: Orthanc) -> None:
    async with probing_client(
        pacs_service_url=orthanc_with_auth.dicomweb_url, pacs_username="gateway", pacs_password="wrong"
    ) as client:
        response = await client.get("/probe")
    error = assert_error(response, 502, "upstream_credentials_rejected")
    assert error["message"] == "the upstream rejected the gateway's credentials"
    assert error["details"]["upstream_status"] == 401
    assert "www-authenticate" not in response.headers  # Orthanc's Basic challenge is not passed on


async def test_basic_credentials_reach_orthanc(orthanc_with_auth: Orthanc) -> None:
    async with probing_client(
        pacs_service_url=orthanc_with_auth.dicomweb_url, pacs_username="gateway", pacs_password="s3cret"
    ) as client:
        assert (await client.get("/probe")).status_code == 200
        assert (await client.get("/-/ready")).status_code == 200


async def test_upstream_5xx_is_502_with_its_status() -> None:
    async def failing(request: Request) -> Response:
        return Response(json.dumps({"HttpStatus": 500, "Message": "Internal error"}), status_code=500)

    with serve(Starlette(routes=[Route("/dicom-web/studies", failing)])) as server:
        async with probing_client(pacs_service_url=f"{server.url}/dicom-web") as client:
            error = assert_error(await client.get("/probe"), 502, "upstream_error")
    assert error["details"] == {"operation": "probe", "upstream_status": 500}


async def test_upstream_failures_are_counted_in_metrics(stopped_orthanc: Orthanc) -> None:
    async with probing_client(pacs_service_url=stopped_orthanc.dicomweb_url) as client:
        await client.get("/probe")
        metrics = (await client.get("/-/metrics")).text
    assert 'gateway_upstream_errors_total{kind="connect",operation="probe"} 1.0' in metrics
