"""What a Python proxy of QIDO costs before the gateway adds anything: `.venv/bin/python bench/floor.py [--rounds N]`.

Issue 15 asks for the gateway's CPU per QIDO request as a share of Orthanc's own. This script measures the floor
under that figure, layer by layer, in one run against one Orthanc holding the bench's data:

- `uvicorn`: uvicorn (uvloop, httptools, the gateway's own edge protocol) and a plain ASGI app that answers a fixed
  JSON body the size of a QIDO answer. No upstream exchange. What serving a request costs in this stack.
- `+ aiohttp`: the same app, which relays the same search to Orthanc through an aiohttp session configured as the
  gateway's (pooled, keep-alive) and answers its body. What a proxy with no routing, no checks and no logs costs.
- `+ pool`: the same relay through the gateway's own pool for small exchanges (`gateway.upstream.exchange`).
- `+ starlette`: the aiohttp relay as one Starlette `Route`, with Starlette's default middleware stack around it.
- the gateway itself (`dicom-gateway serve`, as `bench/run.py` starts it), and nginx in front of the same Orthanc.

Each side runs wrk at 1 client for `--seconds`, the sides rotated over `--rounds`; CPU is utime+stime from
/proc/<pid>/stat of the serving process over the side's run, divided by the requests it answered, and the same for
Orthanc over the direct runs. It prints a Markdown table (median of the rounds) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bench.run as bench  # noqa: E402
from tests.support.nginx import Nginx  # noqa: E402
from tests.support.orthanc import Orthanc, free_port  # noqa: E402

_PATIENTS = 200
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


# --- the floor servers (run as `floor.py --serve VARIANT`) ---------------------------------------------------------


def _answer(body: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
        {"type": "http.response.body", "body": body},
    ]


def _serve(variant: str, port: int, upstream: str) -> None:
    import aiohttp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from yarl import URL

    from gateway.edge.http import EdgeLimits, protocol_for
    from gateway.upstream.exchange import ExchangePool

    session: aiohttp.ClientSession | None = None
    pool: ExchangePool | None = None

    async def relay(query: str) -> bytes:
        nonlocal session, pool
        if variant == "pool":
            if pool is None:
                pool = ExchangePool(URL(upstream), max_connections=32, connect_s=5, read_s=30, pool_s=5,
                                    keepalive_s=0.5)
            answer = await pool.send("GET", f"/dicom-web/studies?{query}", [("Accept", "application/dicom+json")],
                                     None)
            return answer.body
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=0.5),
                                            skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                            auto_decompress=False)
        async with session.get(f"{upstream}/dicom-web/studies?{query}",
                               headers={"Accept": "application/dicom+json"}) as response:
            return await response.read()

    fixed = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3" * 12]}}] * 4).encode()

    async def plain(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = fixed if variant == "uvicorn" else await relay(scope["query_string"].decode())
        for message in _answer(body):
            await send(message)

    async def route(request: Request) -> Response:
        return Response(await relay(request.url.query), media_type="application/json")

    app: Any = Starlette(routes=[Route("/dicom-web/studies", route)]) if variant == "starlette" else plain
    limits = EdgeLimits(max_field_bytes=8192, max_head_bytes=32768, max_fields=100, head_timeout_s=30,
                        max_query_bytes=8192, max_query_params=100)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="auto", http=protocol_for(limits), log_config=None,
                access_log=False, server_header=False)


# --- the measurement -----------------------------------------------------------------------------------------------


def run_seconds(pids: list[int]) -> float:
    """Time on a CPU from the scheduler's own account (/proc/<pid>/task/*/schedstat, ns): exact, where utime+stime
    is sampled at the clock tick and can misplace short bursts."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", choices=("uvicorn", "aiohttp", "pool", "starlette"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port, args.upstream)
        return 0

    bench.ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="dicom-gateway-floor-"))
    orthanc = Orthanc(work / "orthanc")
    started: list[subprocess.Popen[bytes]] = []
    gateway = None
    nginx = Nginx(work / "nginx", orthanc.url)
    try:
        orthanc.start()
        nginx.start()
        secret = secrets.token_hex(32)
        gateway = bench.start_gateway(orthanc, work, secret, "gateway", audit_trail="off")
        stack = bench.Stack(orthanc, gateway, bench.clinician_token(secret), work)
        bench.populate(stack, _PATIENTS)
        time.sleep(bench.STABLE_PAUSE_S)
        direct = bench.wrk_script(work / "direct.lua", "/dicom-web/studies?PatientID=", {}, _PATIENTS)
        via_gateway = bench.wrk_script(work / "gateway.lua", "/exams/studies?PatientId=", stack.auth, _PATIENTS)
        sides: list[tuple[str, str, Path, Callable[[], list[int]]]] = [
            ("direct (Orthanc)", orthanc.url, direct, lambda: []),
            ("nginx", nginx.url, direct, nginx.pids),
        ]
        for variant in ("uvicorn", "aiohttp", "pool", "starlette"):
            port = free_port()
            process = subprocess.Popen([sys.executable, __file__, "--serve", variant, "--port", str(port),
                                        "--upstream", orthanc.url], stdout=subprocess.DEVNULL)
            started.append(process)
            _wait_listening(port)
            sides.append((f"floor: {variant if variant == 'uvicorn' else '+ ' + variant}",
                          f"http://127.0.0.1:{port}", direct, partial(list, [process.pid])))
        sides.append(("dicom-gateway", gateway.url, via_gateway, lambda: [stack.gateway_pid]))
        rows = _measure(sides, stack, args.rounds, args.seconds)
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)
        if gateway is not None:
            gateway.stop()
        nginx.stop()
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(_table(rows))
    return 0


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise bench.BenchError(f"the floor server on {port} did not start")


# side, req/s, its CPU µs/req (utime+stime), Orthanc's, its CPU µs/req (schedstat), Orthanc's
Row = tuple[str, list[float], list[float], list[float], list[float], list[float]]


def _measure(sides: list[tuple[str, str, Path, Callable[[], list[int]]]], stack: bench.Stack, rounds: int,
             seconds: float) -> list[Row]:
    orthanc = [stack.orthanc_pid] if stack.orthanc_pid else []
    for _, url, script, _ in sides:
        bench.run_wrk(url, script, 1, 1)  # warm-up: connections, caches
    found: dict[str, tuple[list[float], ...]] = {name: ([], [], [], [], []) for name, *_ in sides}
    for i in range(rounds):
        for name, url, script, pids in sides[i % len(sides):] + sides[:i % len(sides)]:
            own = pids()
            before = bench.cpu_seconds(own), bench.cpu_seconds(orthanc), run_seconds(own), run_seconds(orthanc)
            run = bench.run_wrk(url, script, 1, seconds)
            after = bench.cpu_seconds(own), bench.cpu_seconds(orthanc), run_seconds(own), run_seconds(orthanc)
            rps, cpu, upstream, exact, exact_upstream = found[name]
            rps.append(run.rps)
            for into, k in ((cpu, 0), (upstream, 1), (exact, 2), (exact_upstream, 3)):
                into.append((after[k] - before[k]) / run.requests * 1e6)
            bench.log(f"  {name}: {run.rps:.0f} req/s, {cpu[-1]:.0f} µs CPU per request (Orthanc {upstream[-1]:.0f})")
    return [(name, *found[name]) for name, *_ in sides]  # type: ignore[misc]


def _table(rows: list[Row]) -> str:
    orthanc = statistics.median(rows[0][3])
    exact_orthanc = statistics.median(rows[0][5])
    out = ["| side (1 client) | req/s | CPU µs/request (utime+stime) | ÷ Orthanc's | on-CPU µs/request (schedstat) "
           "| ÷ Orthanc's |", "|---|---|---|---|---|---|"]
    for name, rps, cpu, upstream, exact, exact_upstream in rows:
        direct = name.startswith("direct")
        own = statistics.median(upstream if direct else cpu)
        on_cpu = statistics.median(exact_upstream if direct else exact)
        out.append(f"| {name} | {statistics.median(rps):.0f} | {own:.0f} | {own / orthanc:.2f}x | {on_cpu:.0f} | "
                   f"{on_cpu / exact_orthanc:.2f}x |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
