"""The HTTP edge (issue 10, class 5), measured over real sockets against a running `dicom-gateway serve`.

Defaults under test: a header field up to 16 KiB, 64 KiB of head in all, 100 fields (431 above); the head within
5 s of the connection or of the request's first byte (408 and close; an idle connection is closed); a query string
up to 8 KiB (414 above) and 200 parameters (400 above). Every refusal is the gateway's JSON error.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.settings import SettingsError, load_settings
from tests.conftest import gateway_env
from tests.support.processes import GatewayProcess

KIB = 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = gateway_env(pacs_service_url="http://127.0.0.1:9/dicom-web", auth_mode="none", log_level="warning")
    with GatewayProcess(env, tmp_path_factory.mktemp("edge") / "gateway.log") as process:
        yield process


def connect(gateway: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=15)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def exchange(gateway: GatewayProcess, request: bytes) -> bytes:
    with connect(gateway) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may stop reading early
            sock.sendall(request)
        return read_all(sock)


def head(target: str = "/-/healthz", fields: list[tuple[str, str]] | None = None, close: bool = True) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: gateway.test", *(f"{n}: {v}" for n, v in fields or [])]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def error_of(response: bytes, code: int) -> dict[str, Any]:
    assert status(response) == code, response[:300]
    raw_head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in raw_head.lower()
    assert b"connection: close" in raw_head.lower()
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    return error


def test_a_head_within_the_limits_is_served(gateway: GatewayProcess) -> None:
    fields = [(f"X-Field-{n}", "v" * (16 * KIB - 20)) for n in range(3)] + [(f"X-Small-{n}", "v") for n in range(90)]
    assert status(exchange(gateway, head(fields=fields))) == 200
    assert status(exchange(gateway, head(f"/-/healthz?{'&'.join(f'p{n}=1' for n in range(200))}"))) == 200


def test_a_header_field_over_16_kib_is_431(gateway: GatewayProcess) -> None:
    error = error_of(exchange(gateway, head(fields=[("X-Big", "v" * (16 * KIB))])), 431)
    assert error["code"] == "request_header_fields_too_large"
    assert error["details"] == {"limit_bytes": 16 * KIB, "limit": "field"}


def test_a_head_over_64_kib_in_all_is_431(gateway: GatewayProcess) -> None:
    fields = [(f"X-Field-{n}", "v" * (15 * KIB)) for n in range(5)]
    error = error_of(exchange(gateway, head(fields=fields)), 431)
    assert error["details"] == {"limit_bytes": 64 * KIB, "limit": "head"}


def test_more_than_100_header_fields_is_431(gateway: GatewayProcess) -> None:
    error = error_of(exchange(gateway, head(fields=[(f"X-F{n}", "v") for n in range(101)])), 431)
    assert error["details"] == {"limit_fields": 100, "limit": "fields"}


def test_an_endless_header_line_is_cut_off_near_the_limit(gateway: GatewayProcess) -> None:
    sent = 0
    with connect(gateway) as sock:
        sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: gateway.test\r\nX-Endless: ")
        try:
            while sent < 64 * 1024 * KIB:
                sock.sendall(b"v" * (64 * KIB))
                sent += 64 * KIB
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    # The server stopped reading long before 64 MiB: the client saw the connection refused, maybe the 431 too.
    assert sent < 64 * 1024 * KIB
    assert answer == b"" or status(answer) == 431


def test_a_request_target_over_64_kib_is_414(gateway: GatewayProcess) -> None:
    error = error_of(exchange(gateway, head("/-/" + "p" * (64 * KIB))), 414)
    assert error["code"] == "uri_too_long"


def test_a_query_string_over_8_kib_is_414(gateway: GatewayProcess) -> None:
    error = error_of(exchange(gateway, head(f"/-/healthz?q={'v' * (8 * KIB)}")), 414)
    assert error["details"] == {"limit_bytes": 8 * KIB}


def test_more_than_200_query_parameters_is_400(gateway: GatewayProcess) -> None:
    error = error_of(exchange(gateway, head(f"/-/healthz?{'&'.join(f'p{n}=1' for n in range(201))}")), 400)
    assert error["details"] == {"limit_parameters": 200}


def test_a_request_that_is_not_http_is_a_json_400(gateway: GatewayProcess) -> None:
    error = error_of(exchange(gateway, b"GET / HTTP/1.1\r\nHost: gateway.test\r\nBad Header\r\n\r\n"), 400)
    assert error["code"] == "bad_request"


def closed_after(sock: socket.socket, trickle: bytes = b"") -> tuple[float, bytes]:
    """Seconds until the server closes (sending `trickle` a byte at a time, every 0.5 s), and what it sent."""
    started = time.monotonic()
    sock.settimeout(0.5)
    received = b""
    for byte in [trickle[i:i + 1] for i in range(len(trickle))] or [b""] * 40:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        except ConnectionResetError:
            chunk = b""
        if chunk == b"":
            return time.monotonic() - started, received
        if chunk:
            received += chunk
            continue
        if byte:
            try:
                sock.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, received
    return time.monotonic() - started, received


def test_a_head_trickled_slower_than_5_s_is_408_and_closed(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: gateway.test\r\n")
        elapsed, answer = closed_after(sock, trickle=b"X-Slow: " + b"v" * 40)  # 20 s if nobody stops it
    assert 4.5 <= elapsed <= 7, elapsed
    assert error_of(answer, 408)["code"] == "request_timeout"


def test_a_connection_that_sends_nothing_is_closed_after_5_s(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        elapsed, answer = closed_after(sock)
    assert 4.5 <= elapsed <= 7, elapsed
    assert answer == b""


def test_the_timeout_covers_the_head_only_not_a_slow_body(gateway: GatewayProcess) -> None:
    body = json.dumps({"SourceID": "PACS-1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.77",
                       "EventType": "COMPLETED"}).encode()
    with connect(gateway) as sock:
        sock.sendall(b"POST /new-exam-callback HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        for part in (body[:10], body[10:20], body[20:]):
            time.sleep(2.5)  # 7.5 s for the whole body, past the head timeout
            sock.sendall(part)
        assert status(read_all(sock)) == 204


def test_a_kept_alive_connection_serves_request_after_request(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        for _ in range(3):
            sock.sendall(head(close=False))
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert status(answer) == 200
            time.sleep(3)  # idle, but within the keep-alive time (5 s): the next request is a new head


@pytest.mark.parametrize(("settings", "variable"), [
    ({"http_max_field_bytes": "70000"}, "HTTP_MAX_HEAD_BYTES"),
    ({"http_max_head_bytes": "100"}, "HTTP_MAX_HEAD_BYTES"),
    ({"http_head_timeout_s": "0"}, "HTTP_HEAD_TIMEOUT_S"),
    ({"http_max_fields": "0"}, "HTTP_MAX_FIELDS"),
    ({"http_max_query_params": "0"}, "HTTP_MAX_QUERY_PARAMS"),
])
def test_limits_that_cannot_work_are_refused_at_start(settings: dict[str, Any], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(None, pacs_service_url="http://127.0.0.1:9/dicom-web", auth_mode="none", **settings)
