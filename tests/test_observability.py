"""Request ids, one structured log line per request without PHI, and Prometheus metrics."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
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
        err = capsys.readouterr().err
    assert response.status_code == 503
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
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
    assert PATIENT_ID not in err  # neither the query nor the unmatched path reach logs at info level


async def test_debug_level_logs_the_request_target(app_client: AppClient, capsys: pytest.CaptureFixture[str]) -> None:
    async with app_client(log_level="debug") as client:
        capsys.readouterr()
        await client.get(f"/-/healthz?PatientID={PATIENT_ID}")
        err = capsys.readouterr().err
    assert PATIENT_ID in err


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
