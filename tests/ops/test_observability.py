"""Request ids, one structured log line per request without PHI, and Prometheus metrics."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Scope

from gateway.app import create_app
from gateway.edge.middleware import UNMATCHED_ROUTE, route_template
from tests.conftest import AppClient, make_settings

PATIENT_ID = "PHI-PATIENT-7731"


async def test_request_id_is_generated_and_returned(app_client: AppClient) -> None:
    async with app_client() as client:
        first = await client.get("/-/healthz")
        second = await client.get("/-/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_callers_request_id_is_kept_and_a_forged_one_replaced(app_client: AppClient) -> None:
    async with app_client() as client:
        kept = await client.get("/-/healthz", headers={"X-Request-ID": "trace-42.a:b"})
        forged = await client.get("/-/healthz", headers={"X-Request-ID": 'x" injected="1'})
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    assert forged.headers["x-request-id"] != 'x" injected="1'


async def test_one_json_line_per_request_with_route_template_and_no_phi(
    app_client: AppClient, capsys: pytest.CaptureFixture[str]
) -> None:
    async with app_client() as client:
        capsys.readouterr()
        response = await client.get(f"/-/ready?PatientID={PATIENT_ID}", headers={"X-Request-ID": "req-1"})
        await client.get(f"/nothing/{PATIENT_ID}")
        out = capsys.readouterr().out
    assert response.status_code == 503
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 2
    ready = requests[0]
    assert ready["request_id"] == "req-1"
    assert ready["route"] == "/-/ready"
    assert ready["status"] == 503
    assert ready["method"] == "GET"
    assert ready["duration_ms"] >= ready["upstream_ms"] >= 0
    assert ready["upstream_calls"] == 0  # the connection was refused before any answer
    assert requests[1]["route"] == "<unmatched>"
    assert PATIENT_ID not in out  # neither the query nor the unmatched path reach logs at info level


async def test_debug_level_logs_the_request_target(app_client: AppClient, capsys: pytest.CaptureFixture[str]) -> None:
    async with app_client(log_level="debug") as client:
        capsys.readouterr()
        await client.get(f"/-/healthz?PatientID={PATIENT_ID}")
        out = capsys.readouterr().out
    assert PATIENT_ID in out


async def test_metrics_count_requests_by_route_template_and_status(app_client: AppClient) -> None:
    async with app_client() as client:
        for _ in range(3):
            await client.get("/uid")
        await client.get("/no/such/route")
        await client.post("/uid")
        text = (await client.get("/-/metrics")).text
    assert 'gateway_requests_total{method="GET",route="/uid",status="200"} 3.0' in text
    assert 'gateway_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'gateway_requests_total{method="POST",route="/uid",status="405"} 1.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.005",method="GET",route="/uid",status="200"}' in text
    assert "# TYPE gateway_upstream_request_duration_seconds histogram" in text


async def test_unknown_route_and_wrong_method_are_json(app_client: AppClient) -> None:
    async with app_client() as client:
        missing = await client.get("/exams-typo")
        wrong = await client.delete("/uid")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "no such resource",
                                        "details": {"path": "/exams-typo"}}}
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_a_bug_answers_500_in_the_error_shape() -> None:
    app = create_app(make_settings())

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/broken", broken))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            response = await client.get("/broken")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error",
                                         "message": "the gateway failed to handle this request", "details": None}}


# UIDs that must never reach a label: the templates name the resource, not the study.
STUDY, SERIES, SOP = "1.2.840.99.7731", "1.2.840.99.7732", "1.2.840.99.7733"
SERIES_PATH, SERIES_TEMPLATE = f"/dicomweb/studies/{STUDY}/series/{SERIES}", "/dicomweb/studies/{study}/series/{series}"
INSTANCE, INSTANCE_TEMPLATE = f"{SERIES_PATH}/instances/{SOP}", SERIES_TEMPLATE + "/instances/{instance}"


@pytest.mark.parametrize(("method", "path", "template"), [
    ("GET", "/dicomweb/studies", "/dicomweb/studies"),
    ("GET", "/dicomweb/instances", "/dicomweb/instances"),
    ("GET", f"/dicomweb/studies/{STUDY}/series", "/dicomweb/studies/{study}/series"),
    ("GET", f"{SERIES_PATH}/instances", f"{SERIES_TEMPLATE}/instances"),
    ("GET", f"/dicomweb/studies/{STUDY}", "/dicomweb/studies/{study}"),
    ("GET", f"/dicomweb/studies/{STUDY}/metadata", "/dicomweb/studies/{study}/metadata"),
    ("GET", f"{SERIES_PATH}/thumbnail", f"{SERIES_TEMPLATE}/thumbnail"),
    ("GET", INSTANCE, INSTANCE_TEMPLATE),
    ("GET", INSTANCE + "/rendered", INSTANCE_TEMPLATE + "/rendered"),
    ("GET", INSTANCE + "/frames/1,2", INSTANCE_TEMPLATE + "/frames/{frames}"),
    ("GET", INSTANCE + "/frames/1/rendered", INSTANCE_TEMPLATE + "/frames/{frames}/rendered"),
    ("GET", INSTANCE + "/bulk/0001000a/3/00100010", INSTANCE_TEMPLATE + "/bulk/{attribute:path}"),
    ("POST", "/dicomweb/studies", "/dicomweb/studies"),
    ("POST", f"/dicomweb/studies/{STUDY}", "/dicomweb/studies/{study}"),
    ("POST", INSTANCE + "/metadata", INSTANCE_TEMPLATE + "/{rest:path}"),  # 404: no STOW-RS there
    ("PUT", f"/dicomweb/studies/{STUDY}/series", "/dicomweb/studies/{study}/series"),  # 405
    ("GET", f"/dicomweb/studies/{STUDY}/nothing", "/dicomweb/studies/{study}/{rest:path}"),  # 404
    ("GET", f"/dicomweb/nothing/{STUDY}", "/dicomweb/{path:path}"),  # 404
])
async def test_dicomweb_requests_are_labelled_by_their_resource_template_without_uids(
    app_client: AppClient, capsys: pytest.CaptureFixture[str], method: str, path: str, template: str
) -> None:
    async with app_client() as client:
        capsys.readouterr()
        answer = await client.request(method, path)
        out = capsys.readouterr().out
        text = (await client.get("/-/metrics")).text
    access = [json.loads(line) for line in out.splitlines() if line.startswith('{"method"')]
    assert [line["route"] for line in access] == [template]
    assert f'gateway_requests_total{{method="{method}",route="{template}",status="{answer.status_code}"}} 1.0' in text
    labels = " ".join(re.findall(r'route="[^"]*"', text))
    assert "dicomweb" in labels
    assert not any(uid in labels for uid in (STUDY, SERIES, SOP))


def test_the_template_through_a_mount_is_the_mounts_path_and_the_inner_routes() -> None:
    async def endpoint(request: Request) -> Response:
        return Response()

    routes: list[BaseRoute] = [Mount("/dicomweb", routes=[
        Route("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", endpoint),
        Route("/studies", endpoint, methods=["GET"]),
    ])]

    def scope(method: str, path: str) -> Scope:
        return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}

    frames = f"{INSTANCE}/frames/1"
    assert route_template(routes, scope("GET", frames)) == INSTANCE_TEMPLATE + "/frames/{frames}"
    assert route_template(routes, scope("PUT", "/dicomweb/studies")) == "/dicomweb/studies"
    assert route_template(routes, scope("GET", f"/dicomweb/other/{STUDY}")) == "/dicomweb"
    assert route_template(routes, scope("GET", "/elsewhere")) == UNMATCHED_ROUTE
