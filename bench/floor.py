"""What a Python proxy costs before the gateway adds anything:
`.venv/bin/python bench/floor.py [--workload qido|stow|retrieve] [--rounds N]`.

Issue 15 asks for the gateway's CPU per QIDO request as a share of Orthanc's own. This script measures the floor
under that figure, layer by layer, in one run against one Orthanc holding the bench's data:

- `uvicorn`: uvicorn (uvloop, httptools, the gateway's own edge protocol) and a plain ASGI app that answers a fixed
  JSON body the size of a QIDO answer. No upstream exchange. What serving a request costs in this stack.
- `+ aiohttp`: the same app, which relays the same search to Orthanc through an aiohttp session configured as the
  gateway's (pooled, keep-alive) and answers its body. What a proxy with no routing, no checks and no logs costs.
- `+ pool`: the same relay through the gateway's own pool for small exchanges (`gateway.upstream.exchange`).
- `+ starlette`: the aiohttp relay as one Starlette `Route`, with Starlette's default middleware stack around it.
- `+ necessary work`: the pool relay serving the gateway's own `GET /exams/studies?PatientId=` with only what the
  gateway must do, through the gateway's own functions: the token verified by its authenticator (cached), the
  parameters by `parse_search`, the scope check, the same upstream query in the profile's encoding, the exact filter
  on what Orthanc answered, the links, the JSON answer, the access line through the gateway's logging and the request
  metrics. No Starlette application, router or middleware, no error mapping: the floor of the work, not a gateway.
- the gateway itself (`dicom-gateway serve`, as `bench/run.py` starts it), and nginx in front of the same Orthanc.

Each side runs wrk at 1 client for `--seconds`, the sides rotated over `--rounds`; CPU is utime+stime from
/proc/<pid>/stat of the serving process over the side's run, divided by the requests it answered, and the same for
Orthanc over the direct runs. It prints a Markdown table (median of the rounds) and writes nothing.

`--workload stow` does the same for issue 15's STOW targets (64x64 instances, 1 and 10 per request, sent one
request at a time, the sides' requests interleaved as in `bench/run.py`). The floor relays the multipart/related
body as it arrives to Orthanc's STOW-RS through aiohttp (the gateway's client for streams) and answers Orthanc's
JSON; `+ checks` also makes the Orthanc round trips the gateway makes for a clinician's upload (the series looked up
by its computed id before the store, both UIDs' `/tools/lookup` while it runs), with the UIDs given in the query
rather than read from the file. The gateway receives the same instances as multipart/form-data at `/exams`. CPU
per request is the scheduler's exact account (schedstat) around each request, for the side and for Orthanc.

`--workload retrieve` streams the bench's 80 MiB instance (WADO-RS, multipart) through each side with curl: the
floor relays aiohttp's chunks as they come, as the gateway's streams do.
"""

from __future__ import annotations

import argparse
import asyncio
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
from urllib.parse import parse_qsl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

import bench.run as bench  # noqa: E402
from tests.support.dicom_factory import generated, new_uid  # noqa: E402
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


def _serve(variant: str, port: int, upstream: str, secret: str = "") -> None:
    import aiohttp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from yarl import URL

    from gateway.edge.http import EdgeLimits, protocol_for
    from gateway.upstream.exchange import ExchangePool
    from gateway.upstream.orthanc import orthanc_id

    session: aiohttp.ClientSession | None = None
    pool: ExchangePool | None = None

    async def relay(query: str) -> bytes:
        nonlocal pool
        if variant == "pool":
            if pool is None:
                pool = ExchangePool(URL(upstream), max_connections=32, connect_s=5, read_s=30, pool_s=5,
                                    keepalive_s=0.5)
            answer = await pool.send("GET", f"/dicom-web/studies?{query}", [("Accept", "application/dicom+json")],
                                     None)
            return answer.body
        async with streams().get(f"{upstream}/dicom-web/studies?{query}",
                               headers={"Accept": "application/dicom+json"}) as response:
            return await response.read()

    fixed = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3" * 12]}}] * 4).encode()

    def streams() -> aiohttp.ClientSession:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=0.5),
                                            skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                            auto_decompress=False)
        return session

    async def lookup(uid: str) -> None:
        async with streams().post(f"{upstream}/tools/lookup", data=uid.encode()) as answer:
            await answer.read()

    async def stow(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Relay the body to Orthanc's STOW-RS as it arrives; with `checks`, the gateway's round trips around it."""
        checks: asyncio.Future[tuple[None, None]] | None = None
        if variant == "checks":
            uids = dict(parse_qsl(scope["query_string"].decode()))
            series_id = orthanc_id(uids["patient"], uids["study"], uids["series"])
            async with streams().get(f"{upstream}/series/{series_id}") as held:
                await held.read()
            checks = asyncio.gather(lookup(uids["study"]), lookup(uids["series"]))

        async def body() -> Any:
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
                if message.get("body"):
                    yield message["body"]

        content_type = dict(scope["headers"])[b"content-type"].decode()
        async with streams().post(f"{upstream}/dicom-web/studies", data=body(),
                                  headers={"Content-Type": content_type, "Accept": "application/dicom+json"}) as r:
            answer = await r.read()
        if checks is not None:
            await checks
        for message in _answer(answer):
            await send(message)

    async def retrieve(scope: dict[str, Any], send: Send) -> None:
        """Stream a WADO-RS answer through, chunk by chunk as aiohttp hands them over (the gateway's way)."""
        accept = dict(scope["headers"]).get(b"accept", b"*/*").decode()
        async with streams().get(f"{upstream}{scope['path']}", headers={"Accept": accept}) as r:
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", r.headers["Content-Type"].encode())]})
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def plain(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            await stow(scope, receive, send)
            return
        if "/instances/" in scope["path"]:
            await retrieve(scope, send)
            return
        body = fixed if variant == "uvicorn" else await relay(scope["query_string"].decode())
        for message in _answer(body):
            await send(message)

    async def route(request: Request) -> Response:
        return Response(await relay(request.url.query), media_type="application/json")

    app: Any = Starlette(routes=[Route("/dicom-web/studies", route)]) if variant == "starlette" else plain
    if variant == "necessary":
        app = _necessary_work(upstream, secret, port)
    limits = EdgeLimits(max_field_bytes=8192, max_head_bytes=32768, max_fields=100, head_timeout_s=30,
                        max_query_bytes=8192, max_query_params=100)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="auto", http=protocol_for(limits), log_config=None,
                access_log=False, server_header=False)


def _necessary_work(upstream: str, secret: str, port: int) -> Any:
    """The `+ necessary work` app: `GET /exams/studies` doing only what the gateway must, with its own functions."""
    import secrets as tokens

    import structlog
    from starlette.datastructures import QueryParams
    from starlette.requests import Request
    from yarl import URL

    from gateway.auth.scope import require_patient_access
    from gateway.components import _authenticator
    from gateway.dicom.dicomjson import DicomJson
    from gateway.dicom.tags import PATIENT_ID, RETRIEVE_URL, STUDY_UID
    from gateway.edge.params import Level, parse_search
    from gateway.exams.links import ExamLinks
    from gateway.ops.logs import configure_logging
    from gateway.ops.metrics import Metrics
    from gateway.settings import load_settings
    from gateway.upstream.exchange import ExchangePool
    from gateway.upstream.profiles import profile_for

    settings = load_settings(pacs_service_url=f"{upstream}/dicom-web", pacs_profile="orthanc", auth_mode="jwt",
                             auth_jwt_secret=secret)
    configure_logging("info", "json")
    log = structlog.get_logger("gateway.access")
    authenticator = _authenticator(settings)
    profile = profile_for(settings.pacs_profile)
    links = ExamLinks(public_base_url=f"http://127.0.0.1:{port}")
    metrics = Metrics()
    pool = ExchangePool(URL(upstream), max_connections=32, connect_s=5, read_s=30, pool_s=5, keepalive_s=0.5)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = tokens.token_hex(16)
        caller = await authenticator.authenticate(Request(scope, receive))
        query = parse_search(QueryParams(scope["query_string"]), Level.STUDY)
        require_patient_access(caller, query.patient_id)
        params = [("PatientID", profile.exact_value(query.patient_id)), ("includefield", PATIENT_ID),
                  ("limit", "200"), ("offset", "0")]
        answer = await pool.send("GET", f"/dicom-web/studies?{profile.query_string(params)}",
                                 [("Accept", "application/dicom+json")], None)
        found = [ds for ds in DicomJson.list_from(json.loads(answer.body) if answer.body else [])
                 if ds.string(PATIENT_ID) == query.patient_id]
        for ds in found:
            if RETRIEVE_URL in ds.raw:
                ds.set_string(RETRIEVE_URL, "UR", links.study(ds.string(STUDY_UID) or "", query.patient_id))
        body = json.dumps([ds.raw for ds in found]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"private, no-store"), (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        metrics.observe_request("/exams/studies", "GET", 200, elapsed)
        log.info("request", method="GET", route="/exams/studies", status=200, duration_ms=round(elapsed * 1000, 2),
                 results=len(found), request_id=request_id)

    return app


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
    parser.add_argument("--serve", choices=("uvicorn", "aiohttp", "pool", "starlette", "checks", "necessary"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--secret", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=("qido", "stow", "retrieve"), default="qido")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="QIDO: each side's wrk run")
    parser.add_argument("--clients", type=int, default=1, help="QIDO: wrk's connections")
    parser.add_argument("--requests", type=int, default=150, help="STOW: requests per side and shape")
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port, args.upstream, args.secret)
        return 0

    bench.ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="dicom-gateway-floor-"))
    orthanc = Orthanc(work / "orthanc")
    started: list[subprocess.Popen[bytes]] = []
    gateway = None
    nginx = Nginx(work / "nginx", orthanc.url)

    secret = secrets.token_hex(32)

    def floor_server(variant: str) -> tuple[str, Callable[[], list[int]]]:
        port = free_port()
        process = subprocess.Popen([sys.executable, __file__, "--serve", variant, "--port", str(port),
                                    "--upstream", orthanc.url, "--secret", secret],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        _wait_listening(port)
        return f"http://127.0.0.1:{port}", partial(list, [process.pid])

    try:
        orthanc.start()
        nginx.start()
        gateway = bench.start_gateway(orthanc, work, secret, "gateway", audit_trail="off")
        stack = bench.Stack(orthanc, gateway, bench.clinician_token(secret), work, nginx=nginx)
        if args.workload == "stow":
            text = _stow(stack, floor_server, args.rounds, args.requests)
        elif args.workload == "retrieve":
            text = _retrieve(stack, floor_server, args.rounds)
        else:
            text = _qido(stack, floor_server, args.rounds, args.seconds, args.clients)
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)
        if gateway is not None:
            gateway.stop()
        nginx.stop()
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    return 0


FloorServer = Callable[[str], tuple[str, Callable[[], list[int]]]]


def _qido(stack: bench.Stack, floor_server: FloorServer, rounds: int, seconds: float, clients: int) -> str:
    bench.populate(stack, _PATIENTS)
    time.sleep(bench.STABLE_PAUSE_S)
    direct = bench.wrk_script(stack.work / "direct.lua", "/dicom-web/studies?PatientID=", {}, _PATIENTS)
    via_gateway = bench.wrk_script(stack.work / "gateway.lua", "/exams/studies?PatientId=", stack.auth, _PATIENTS)
    assert stack.nginx is not None
    sides: list[tuple[str, str, Path, Callable[[], list[int]]]] = [
        ("direct (Orthanc)", stack.direct, direct, lambda: []),
        ("nginx", stack.nx, direct, stack.nginx.pids),
    ]
    for variant in ("uvicorn", "aiohttp", "pool", "starlette"):
        url, pids = floor_server(variant)
        sides.append((f"floor: {variant if variant == 'uvicorn' else '+ ' + variant}", url, direct, pids))
    url, pids = floor_server("necessary")
    sides.append(("floor: + pool + necessary work", url, via_gateway, pids))
    sides.append(("dicom-gateway", stack.gw, via_gateway, lambda: [stack.gateway_pid]))
    return _table(_measure(sides, stack, rounds, seconds, clients), clients)


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


# side, req/s, p50 ms, its CPU µs/req (utime+stime), Orthanc's, its CPU µs/req (schedstat), Orthanc's
Row = tuple[str, list[float], list[float], list[float], list[float], list[float], list[float]]


def _measure(sides: list[tuple[str, str, Path, Callable[[], list[int]]]], stack: bench.Stack, rounds: int,
             seconds: float, clients: int) -> list[Row]:
    orthanc = [stack.orthanc_pid] if stack.orthanc_pid else []
    for _, url, script, _ in sides:
        bench.run_wrk(url, script, 1, 1)  # warm-up: connections, caches
    found: dict[str, tuple[list[float], ...]] = {name: ([], [], [], [], [], []) for name, *_ in sides}
    for i in range(rounds):
        for name, url, script, pids in sides[i % len(sides):] + sides[:i % len(sides)]:
            own = pids()
            before = bench.cpu_seconds(own), bench.cpu_seconds(orthanc), run_seconds(own), run_seconds(orthanc)
            run = bench.run_wrk(url, script, clients, seconds)
            after = bench.cpu_seconds(own), bench.cpu_seconds(orthanc), run_seconds(own), run_seconds(orthanc)
            rps, p50, cpu, upstream, exact, exact_upstream = found[name]
            rps.append(run.rps)
            p50.append(run.p50_ms)
            for into, k in ((cpu, 0), (upstream, 1), (exact, 2), (exact_upstream, 3)):
                into.append((after[k] - before[k]) / run.requests * 1e6)
            bench.log(f"  {name}: {run.rps:.0f} req/s, {cpu[-1]:.0f} µs CPU per request (Orthanc {upstream[-1]:.0f})")
    return [(name, *found[name]) for name, *_ in sides]  # type: ignore[misc]


def _table(rows: list[Row], clients: int) -> str:
    orthanc = statistics.median(rows[0][4])
    exact_orthanc = statistics.median(rows[0][6])
    p50_direct = statistics.median(rows[0][2])
    rps_direct = statistics.median(rows[0][1])
    side = f"side ({clients} client{'s' if clients > 1 else ''})"
    out = [f"| {side} | req/s | ÷ direct's | p50 ms | ÷ direct's | CPU µs/request (utime+stime) | ÷ Orthanc's "
           "| on-CPU µs/request (schedstat) | ÷ Orthanc's |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rps, p50, cpu, upstream, exact, exact_upstream in rows:
        direct = name.startswith("direct")
        own = statistics.median(upstream if direct else cpu)
        on_cpu = statistics.median(exact_upstream if direct else exact)
        latency = statistics.median(p50)
        rate = statistics.median(rps)
        out.append(f"| {name} | {rate:.0f} | {rate / rps_direct:.0%} | {latency:.2f} | {latency / p50_direct:.2f}x | "
                   f"{own:.0f} | {own / orthanc:.2f}x | {on_cpu:.0f} | {on_cpu / exact_orthanc:.2f}x |")
    return "\n".join(out)


# --- STOW and retrieval ----------------------------------------------------------------------------------------------


def _on_cpu(pids: list[int]) -> float:
    return run_seconds(pids) if pids else 0.0


def _stow_request(per_request: int, gateway: bool, tag: str) -> tuple[str, bytes, str, int]:
    """(query, body, content type, instances): fresh 64x64 instances of one new series, as the side takes them."""
    patient, study, series = f"FLOOR{tag}", new_uid(), new_uid()
    files = [generated(patient, study_uid=study, series_uid=series, rows=64, columns=64).data
             for _ in range(per_request)]
    boundary = f"floor-{secrets.token_hex(8)}"
    if gateway:
        return "", bench.form_body(files, boundary), f"multipart/form-data; boundary={boundary}", per_request
    query = f"?patient={patient}&study={study}&series={series}"
    return query, bench.related_body(files, boundary), bench.related_type(boundary), per_request


def _stow(stack: bench.Stack, floor_server: FloorServer, rounds: int, requests: int) -> str:
    assert stack.nginx is not None
    direct = {"Accept": "application/dicom+json"}
    # name, URL of the STOW resource, headers, whether it takes the gateway's form, the serving processes
    sides: list[tuple[str, str, dict[str, str], bool, Callable[[], list[int]]]] = [
        ("direct (Orthanc)", f"{stack.direct}/dicom-web/studies", direct, False, lambda: []),
        ("nginx", f"{stack.nx}/dicom-web/studies", direct, False, stack.nginx.pids),
    ]
    for variant in ("aiohttp", "checks"):
        url, pids = floor_server(variant)
        sides.append((f"floor: + {variant}", f"{url}/dicom-web/studies", direct, False, pids))
    sides.append(("dicom-gateway", f"{stack.gw}/exams", stack.auth, True, lambda: [stack.gateway_pid]))
    orthanc = [stack.orthanc_pid] if stack.orthanc_pid else []
    out = ["| STOW 64x64 (9 KB), 1 client | instances/s | ÷ direct | side's on-CPU µs/request | Orthanc's on-CPU "
           "µs/request |", "|---|---|---|---|---|"]
    with httpx.Client(timeout=60) as client:
        for index, (_, url, headers, form, _) in enumerate(sides):  # warm-up: connections, code paths
            for k in range(3):
                query, body, content_type, count = _stow_request(10, form, f"W{index}{k}")
                bench.post_stow(client, url + query, headers, body, content_type, count)
        for per_request in (1, 10):
            # side → per round: [seconds, instances, side's CPU s, Orthanc's CPU s]
            found = {name: [[0.0, 0.0, 0.0, 0.0] for _ in range(rounds)] for name, *_ in sides}
            for r in range(rounds):
                time.sleep(bench.STABLE_PAUSE_S)  # the last round's studies become stable first
                for k in range(requests // rounds):
                    for index in [*range(k % len(sides), len(sides)), *range(k % len(sides))]:
                        name, url, headers, form, pids = sides[index]
                        query, body, content_type, count = _stow_request(per_request, form, f"{per_request}{r}{k}")
                        own = pids()
                        before = _on_cpu(own), _on_cpu(orthanc)
                        seconds = bench.post_stow(client, url + query, headers, body, content_type, count)
                        totals = found[name][r]
                        totals[0] += seconds
                        totals[1] += count
                        totals[2] += _on_cpu(own) - before[0]
                        totals[3] += _on_cpu(orthanc) - before[1]
                per_side = ", ".join(f"{name} {found[name][r][1] / found[name][r][0]:.0f}" for name, *_ in sides)
                bench.log(f"  STOW {per_request}/request round {r + 1}: {per_side} instances/s")
            direct_rate = [t[1] / t[0] for t in found[sides[0][0]]]
            for name, *_ in sides:
                rate = [t[1] / t[0] for t in found[name]]
                per_call = [t[2] / (t[1] / per_request) * 1e6 for t in found[name]]
                upstream = [t[3] / (t[1] / per_request) * 1e6 for t in found[name]]
                ratio = statistics.median(a / b for a, b in zip(rate, direct_rate, strict=True))
                out.append(f"| {name}, {per_request}/request | {statistics.median(rate):.0f} | {ratio:.0%} | "
                           f"{statistics.median(per_call):.0f} | {statistics.median(upstream):.0f} |")
    return "\n".join(out)


def _retrieve(stack: bench.Stack, floor_server: FloorServer, rounds: int) -> str:
    with httpx.Client(timeout=120) as client:
        path = stack.work / "multiframe-80mib.dcm"
        item = bench.write_multiframe(path, "FLOORWADO", frames=160)
        bench.stow_file_direct(client, stack.direct, path)
        path.unlink()
    floor_url, floor_pids = floor_server("aiohttp")
    viewer = bench.viewer_token(stack, item)
    assert stack.nginx is not None
    sides: list[tuple[str, Callable[[], bench.CurlResult], Callable[[], list[int]]]] = [
        ("direct (Orthanc)", partial(bench.direct_wado, stack, item), lambda: []),
        ("nginx", partial(bench.direct_wado, stack, item, base=stack.nx), stack.nginx.pids),
        ("floor: + aiohttp, streamed", partial(bench.direct_wado, stack, item, base=floor_url), floor_pids),
        ("dicom-gateway /exams", partial(bench.gateway_download, stack, item), lambda: [stack.gateway_pid]),
        ("dicom-gateway /dicomweb", partial(bench.dicomweb_wado, stack, item, viewer), lambda: [stack.gateway_pid]),
    ]
    orthanc = [stack.orthanc_pid] if stack.orthanc_pid else []
    found: dict[str, list[tuple[float, float, float]]] = {name: [] for name, *_ in sides}  # MiB/s, CPU ms, Orthanc's
    for _, fetch, _ in sides:
        if fetch().status != 200:  # warm-up, and the check that every side answers
            raise bench.BenchError("a side did not answer the retrieval")
    for r in range(rounds):
        for name, fetch, pids in sides[r % len(sides):] + sides[:r % len(sides)]:
            own = pids()
            before = _on_cpu(own), _on_cpu(orthanc)
            result = fetch()
            found[name].append((item.size / result.time_total / bench.MIB, (_on_cpu(own) - before[0]) * 1e3,
                                (_on_cpu(orthanc) - before[1]) * 1e3))
            bench.log(f"  {name}: {found[name][-1][0]:.0f} MiB/s")
    direct = [m for m, _, _ in found[sides[0][0]]]
    out = [f"| retrieve {item.size / bench.MIB:.0f} MiB (WADO-RS multipart) | MiB/s | ÷ direct | side's on-CPU ms "
           "| Orthanc's on-CPU ms |", "|---|---|---|---|---|"]
    for name, *_ in sides:
        rate = [m for m, _, _ in found[name]]
        ratio = statistics.median(a / b for a, b in zip(rate, direct, strict=True))
        out.append(f"| {name} | {statistics.median(rate):.0f} | {ratio:.0%} | "
                   f"{statistics.median(c for _, c, _ in found[name]):.0f} | "
                   f"{statistics.median(o for _, _, o in found[name]):.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
