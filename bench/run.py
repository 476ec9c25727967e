"""Gateway vs direct-to-Orthanc benchmark: `.venv/bin/python bench/run.py [--quick] [--keep]`.

One run starts its own Orthanc (free ports, temporary directory) and its own `dicom-gateway serve` process
(AUTH_MODE=jwt, a clinician HS256 token on every gateway request, LOG_LEVEL=info: one access line per request),
stores the data, then measures
the same work sent straight to Orthanc's DICOMweb root and sent through the gateway's `/exams` API:

1. QIDO studies-by-patient (wrk, random patient per request) at 1 and 4 clients: req/s, p50, p99.
2. Retrieval of one 80 MiB multi-frame instance (curl to /dev/null): MiB/s, through /exams and through /dicomweb
   with a viewer token.
3. STOW of small instances, 1 and 10 per request, sequential, the two sides' requests alternating: instances/s.
4. The gateway's peak RSS while a ~1 GiB upload and a ~1 GiB download pass through it.

A second gateway, the same with AUDIT_TRAIL=on (its SQLite store in the run's directory, shipping to a private
rsyslogd), takes its turn in the QIDO and STOW rounds, so that the audit trail's cost is the points its ratio loses
against the first gateway's in the same run (issue 13; `--skip-audit` leaves it out).

The results are printed as a Markdown table and written to bench/results.md. The exit status is 0 when every
measurement was made (whether or not the targets were met) and 1 when the bench itself broke.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests` is not installed: import the fixtures from the checkout

import httpx  # noqa: E402
from joserfc import jwt  # noqa: E402
from joserfc.jwk import OctKey  # noqa: E402

from bench import profile as layers  # noqa: E402
from tests.support.dicom_factory import generated, gradient_row, image_dataset, new_uid  # noqa: E402
from tests.support.nginx import Nginx  # noqa: E402
from tests.support.orthanc import Orthanc, free_port  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402
from tests.support.processes import GatewayProcess  # noqa: E402
from tests.support.rsyslog import Rsyslog  # noqa: E402

RESULTS = REPO / "bench" / "results.md"
MIB = 1024 * 1024
ACCEPT_WADO = 'multipart/related; type="application/dicom"; transfer-syntax=*'
QIDO_PATIENTS = 200
QIDO_INSTANCES_PER_PATIENT = 5
POPULATION_BATCH = 50
POPULATION_IN_FLIGHT = 3
STOW_N = 1000  # instances per run and side
STOW_RUNS = 5
RETRIEVAL_RUNS = 5
BIG_FRAMES = 2048  # 2048 x 512 KiB = 1 GiB of pixel data
RSS_INTERVAL_S = 0.05

# Targets (gateway against direct).
QIDO_RPS_RATIO_MIN = 0.88  # 4 clients (issue 15)
QIDO_P50_RATIO_MAX = 1.2  # 1 client: the gateway's p50 ÷ direct's
RETRIEVAL_RATIO_MIN = 0.92
STOW_RATIO_MIN = {1: 0.80, 10: 0.90}  # instances per request → least share of direct (64x64 instances)
STABLE_PAUSE_S = 3.0  # > Orthanc's StableAge (deploy/dev/orthanc.sh)
RSS_GROWTH_MAX_MIB = 64.0
QIDO_CPU_RATIO_MAX = 0.15  # the gateway's CPU per QIDO request ÷ Orthanc's (issue 15)
SCALE_CLIENTS = 8  # QIDO with 1 and 2 gateway workers
AUDIT_COST_MAX = 0.03  # the audit trail's cost on the QIDO and STOW ratios (issue 13)
DRAIN_TIMEOUT_S = 60.0


class BenchError(Exception):
    """The bench could not measure something (not a missed target)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- environment ------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    orthanc: Orthanc
    gateway: GatewayProcess
    token: str
    work: Path
    audited: Audited | None = None  # the same gateway with AUDIT_TRAIL=on, for the QIDO and STOW rounds
    nginx: Nginx | None = None  # nginx in front of the same Orthanc: the peer every table measures

    @property
    def direct(self) -> str:
        return self.orthanc.url

    @property
    def nx(self) -> str:
        if self.nginx is None:
            raise BenchError("nginx is not running")
        return self.nginx.url

    @property
    def gw(self) -> str:
        return self.gateway.url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def gateway_pid(self) -> int:
        process = self.gateway._process
        if process is None:
            raise BenchError("the gateway process is not running")
        return process.pid

    @property
    def orthanc_pid(self) -> int | None:
        pid_file = self.orthanc.run_dir / "orthanc.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text().strip())
        return None


@dataclass
class Audited:
    """A second gateway, its audit trail on: records in its SQLite store, shipped to a private rsyslogd."""

    gateway: GatewayProcess
    database: Path
    syslog: Rsyslog

    @property
    def url(self) -> str:
        return self.gateway.url

    def pending(self) -> int:
        """Audit records not yet taken by the syslog server."""
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)) as db:
            row = db.execute("SELECT count(*) FROM audit_records WHERE ship_state = 'pending'").fetchone()
        return int(row[0])

    def drain(self) -> float:
        """Wait until every record is shipped, so that no side is measured while the shipper catches up; seconds."""
        started = time.perf_counter()
        while self.pending():
            if time.perf_counter() - started > DRAIN_TIMEOUT_S:
                raise BenchError(f"{self.pending()} audit records still unshipped after {DRAIN_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return time.perf_counter() - started


def gateway_env(**settings: str) -> dict[str, str]:
    """This process's environment without inherited gateway settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PACS_", "AUTH_", "DICOM_", "LOG_", "EXAMS_", "AUDIT_", "DATABASE_"))}
    env.update({k.upper(): v for k, v in settings.items()})
    return env


def clinician_token(secret: str) -> str:
    claims = {"sub": "bench", "exp": int(time.time()) + 6 * 3600, "roles": ["clinician"]}
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret))


# --- DICOM data -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredInstance:
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    path: Path
    size: int


def write_multiframe(path: Path, patient_id: str, frames: int, rows: int = 512, columns: int = 512) -> StoredInstance:
    """A multi-frame 16-bit grayscale Part 10 file written to disk frame by frame (never whole in memory).

    pydicom writes the header of a dataset without PixelData; the (7FE0,0010) OW element follows with an explicit
    length (explicit VR little endian: tag, 'OW', two reserved bytes, 4-byte length) and the pixels in chunks.
    """
    ds = image_dataset(patient_id, rows=rows, columns=columns, frames=frames, accession="BENCHBIG", modality="OT",
                       description="Bench multi-frame", patient_name="Bench^Big")
    study_uid, series_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    length = frames * rows * columns * 2
    if length >= 0xFFFFFFFF:
        raise BenchError("pixel data too long for an explicit-length OW element")
    frame = gradient_row(columns) * rows
    with path.open("wb") as out:
        ds.save_as(out, enforce_file_format=True)
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for _ in range(frames):
            out.write(frame)
    return StoredInstance(patient_id, study_uid, series_uid, sop_uid, path, path.stat().st_size)


def related_body(files: Sequence[bytes], boundary: str) -> bytes:
    parts = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        + b"\r\n"
        for data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def form_body(files: Sequence[bytes], boundary: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.dcm"\r\n'
        f"Content-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def related_type(boundary: str) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_file_direct(client: httpx.Client, base: str, path: Path) -> None:
    """STOW-RS of one file from disk to Orthanc, streamed."""
    boundary = f"bench-{secrets.token_hex(8)}"
    size = path.stat().st_size
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {size}\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as src:
            while chunk := src.read(MIB):
                yield chunk
        yield tail

    response = client.post(
        f"{base}/dicom-web/studies", content=body(),
        headers={"Content-Type": related_type(boundary), "Content-Length": str(len(head) + size + len(tail)),
                 "Accept": "application/dicom+json"},
        timeout=600,
    )
    if response.status_code != 200:
        raise BenchError(f"direct STOW of {path.name} answered {response.status_code}: {response.text[:300]}")


def populate(stack: Stack, patients: int) -> tuple[int, float]:
    """`patients` x 1 study x 5 CT 512x512 16-bit, stored straight into Orthanc in batches."""
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=120, limits=httpx.Limits(keepalive_expiry=0.5))
        existing: httpx.Client = local.client
        return existing

    def batch(first: int) -> int:
        files: list[bytes] = []
        for p in range(first, min(first + POPULATION_BATCH // QIDO_INSTANCES_PER_PATIENT, patients)):
            study, series = new_uid(), new_uid()
            for _ in range(QIDO_INSTANCES_PER_PATIENT):
                files.append(generated(patient_id(p), study_uid=study, series_uid=series, rows=512, columns=512,
                                       description="Bench study").data)
        boundary = f"bench-{secrets.token_hex(8)}"
        response = client().post(f"{stack.direct}/dicom-web/studies", content=related_body(files, boundary),
                                 headers={"Content-Type": related_type(boundary),
                                          "Accept": "application/dicom+json"})
        if response.status_code != 200:
            raise BenchError(f"population STOW answered {response.status_code}: {response.text[:300]}")
        return len(files)

    per_batch = POPULATION_BATCH // QIDO_INSTANCES_PER_PATIENT
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(POPULATION_IN_FLIGHT) as pool:
        stored = sum(pool.map(batch, range(0, patients, per_batch)))
    return stored, time.perf_counter() - started


def patient_id(index: int) -> str:
    return f"BENCH{index:04d}"


# --- measurements ------------------------------------------------------------------------------------------------


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us: float = 0.0  # the serving side's CPU per request (utime+stime from /proc over the run)
    orthanc_us: float = 0.0  # Orthanc's CPU per request over the same run


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> WrkRun:
    percentiles: dict[str, float] = {}
    for match in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE):
        percentiles[match.group(1)] = float(match.group(2)) * _WRK_UNITS[match.group(3)]
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sockets:
        errors += sum(int(g) for g in sockets.groups())
    return WrkRun(float(rps.group(1)), percentiles["50"], percentiles["99"], int(total.group(1)), errors)


def wrk_script(path: Path, prefix: str, headers: dict[str, str], patients: int) -> Path:
    lines = [
        "local counter = 0",
        "function setup(thread)",
        "  counter = counter + 1",
        "  thread:set('id', counter)",
        "end",
        "function init(args)",
        "  math.randomseed(os.time() * 1000 + id)",
        "end",
    ]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines += [
        "request = function()",
        f"  local path = {json.dumps(prefix)} .. string.format('BENCH%04d', math.random(0, {patients - 1}))",
        "  return wrk.format('GET', path)",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(base: str, script: Path, clients: int, seconds: float) -> WrkRun:
    threads = min(clients, 2)
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--latency", "-s", str(script), base]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr}{result.stdout}")
    return parse_wrk(result.stdout)


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (fields 14 and 15 of proc(5)), in seconds; a process gone counts 0."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (uvicorn's workers under its supervisor)."""
    found = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found += process_tree(int(child))
    return found


def measured_wrk(stack: Stack, base: str, script: Path, clients: int, seconds: float,
                 serving: Callable[[], list[int]]) -> WrkRun:
    """`run_wrk`, with the CPU per request of the serving processes and of Orthanc over the run."""
    orthanc = [stack.orthanc_pid] if stack.orthanc_pid is not None else []
    own = serving()
    before = cpu_seconds(own), cpu_seconds(orthanc)
    run = run_wrk(base, script, clients, seconds)
    after = cpu_seconds(own), cpu_seconds(orthanc)
    if run.requests:
        run.cpu_us = (after[0] - before[0]) / run.requests * 1e6
        run.orthanc_us = (after[1] - before[1]) / run.requests * 1e6
    return run


@dataclass
class QidoResult:
    clients: int
    direct: list[WrkRun] = field(default_factory=list)
    nginx: list[WrkRun] = field(default_factory=list)
    gateway: list[WrkRun] = field(default_factory=list)
    audited: list[WrkRun] = field(default_factory=list)  # the gateway with its audit trail on


def median_run(runs: list[WrkRun]) -> WrkRun:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def check_qido(stack: Stack, client: httpx.Client) -> None:
    pid = patient_id(1)
    direct = client.get(f"{stack.direct}/dicom-web/studies?PatientID={pid}")
    via = client.get(f"{stack.gw}/exams/studies?PatientId={pid}", headers=stack.auth)
    for name, response in (("direct", direct), ("gateway", via)):
        if response.status_code != 200 or len(response.json()) != 1:
            raise BenchError(f"{name} QIDO check: {response.status_code} {response.text[:300]}")


def bench_qido(stack: Stack, runs: int, seconds: float, patients: int) -> list[QidoResult]:
    direct_script = wrk_script(stack.work / "qido-direct.lua", "/dicom-web/studies?PatientID=", {}, patients)
    gw_script = wrk_script(stack.work / "qido-gateway.lua", "/exams/studies?PatientId=", stack.auth, patients)
    time.sleep(STABLE_PAUSE_S)  # let Orthanc finish its work on the studies just stored
    run_wrk(stack.direct, direct_script, 1, 1)  # warm-up
    run_wrk(stack.gw, gw_script, 1, 1)
    if stack.audited is not None:
        run_wrk(stack.audited.url, gw_script, 1, 1)
        stack.audited.drain()
    run_wrk(stack.nx, direct_script, 1, 1)
    results = []
    for clients in (1, 4):
        result = QidoResult(clients)
        for i in range(runs):
            sides: list[tuple[list[WrkRun], str, Path, Callable[[], list[int]]]] = [
                (result.direct, stack.direct, direct_script, list),
                (result.nginx, stack.nx, direct_script, stack.nginx.pids if stack.nginx else list),
                (result.gateway, stack.gw, gw_script, partial(process_tree, stack.gateway_pid)),
            ]
            if stack.audited is not None:
                sides.append((result.audited, stack.audited.url, gw_script,
                              partial(process_tree, stack.audited.gateway.pid)))
            for found, base, script, serving in sides[i % len(sides):] + sides[:i % len(sides)]:  # rotate
                found.append(measured_wrk(stack, base, script, clients, seconds, serving))
                if stack.audited is not None and base == stack.audited.url:
                    log(f"  (audit records shipped {stack.audited.drain():.1f} s after the run)")
            d, n, g = result.direct[-1], result.nginx[-1], result.gateway[-1]
            a = f", audited {result.audited[-1].rps:.0f} req/s p50 {result.audited[-1].p50_ms:.2f} ms" \
                if result.audited else ""
            log(f"  QIDO c={clients} run {i + 1}: direct {d.rps:.0f} req/s p50 {d.p50_ms:.2f} ms "
                f"(Orthanc {d.orthanc_us:.0f} µs CPU/request), nginx {n.rps:.0f} req/s p50 {n.p50_ms:.2f} ms "
                f"({n.cpu_us:.0f} µs), gateway {g.rps:.0f} req/s p50 {g.p50_ms:.2f} ms ({g.cpu_us:.0f} µs){a} "
                f"(errors {d.errors}/{n.errors}/{g.errors})")
        results.append(result)
    return results


PROFILE_SECONDS = 12


def bench_profile(stack: Stack) -> dict[str, float]:
    """µs of CPU per QIDO request by layer: py-spy samples the gateway through one more 1-client run (12 s)."""
    samples = stack.work / "py-spy.txt"
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(stack.gateway_pid), "-r", "400", "-d",
         str(PROFILE_SECONDS), "-f", "raw", "-o", str(samples), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = measured_wrk(stack, stack.gw, stack.work / "qido-gateway.lua", 1, PROFILE_SECONDS + 1,
                       partial(process_tree, stack.gateway_pid))
    _, errors = spy.communicate(timeout=60)
    if spy.returncode != 0 or not samples.exists():
        raise BenchError(f"py-spy failed ({spy.returncode}): {errors.decode(errors='replace')[-500:]}")
    log(f"  profiled {run.requests} requests at {run.cpu_us:.0f} µs CPU each")
    return layers.microseconds(samples.read_text(), run.cpu_us)


@dataclass
class ScaleResult:
    """QIDO at SCALE_CLIENTS clients through a gateway of 1 and of 2 uvicorn workers."""

    workers: dict[int, list[WrkRun]] = field(default_factory=dict)
    direct: list[WrkRun] = field(default_factory=list)


def bench_scale(stack: Stack, secret: str, database_url: str, runs: int, seconds: float) -> ScaleResult:
    """Both gateways side by side with direct access, rounds rotated as in `bench_qido`. Orthanc shares the two
    cores with them: what a second worker buys here is bounded by what Orthanc leaves free."""
    direct_script = stack.work / "qido-direct.lua"
    gw_script = stack.work / "qido-gateway.lua"
    result = ScaleResult()
    started: dict[int, GatewayProcess] = {}
    try:
        for workers in (1, 2):
            started[workers] = start_gateway(stack.orthanc, stack.work, secret, f"gateway-{workers}-workers",
                                             audit_trail="off", workers=workers, database_url=database_url)
            result.workers[workers] = []
            run_wrk(started[workers].url, gw_script, SCALE_CLIENTS, 1)
        for i in range(runs):
            sides: list[tuple[list[WrkRun], str, Path, Callable[[], list[int]]]] = [
                (result.direct, stack.direct, direct_script, list)]
            for workers, process in started.items():
                sides.append((result.workers[workers], process.url, gw_script, partial(process_tree, process.pid)))
            for found, base, script, serving in sides[i % len(sides):] + sides[:i % len(sides)]:
                found.append(measured_wrk(stack, base, script, SCALE_CLIENTS, seconds, serving))
            log(f"  QIDO c={SCALE_CLIENTS} run {i + 1}: direct {result.direct[-1].rps:.0f} req/s, "
                + ", ".join(f"{w} worker{'s' if w > 1 else ''} {result.workers[w][-1].rps:.0f} req/s "
                            f"({result.workers[w][-1].cpu_us:.0f} µs CPU/request)" for w in started))
    finally:
        for process in started.values():
            process.stop()
    return result


@dataclass
class CurlResult:
    status: int
    size_download: int
    size_upload: int
    time_total: float
    time_starttransfer: float


def run_curl(args: list[str], timeout: float = 900) -> CurlResult:
    fmt = "%{http_code} %{size_download} %{size_upload} %{time_total} %{time_starttransfer}"
    result = subprocess.run(["curl", "-sS", "-w", fmt, *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    if result.returncode != 0:
        raise BenchError(f"curl {' '.join(args[-1:])} failed ({result.returncode}): {result.stderr}")
    status, down, up, total, start = result.stdout.split()[-5:]
    return CurlResult(int(status), int(float(down)), int(float(up)), float(total), float(start))


def direct_wado(stack: Stack, item: StoredInstance, out: str = "/dev/null", base: str | None = None) -> CurlResult:
    """WADO-RS of the instance straight from Orthanc (or through nginx: `base=stack.nx`)."""
    url = (f"{base or stack.direct}/dicom-web/studies/{item.study_uid}/series/{item.series_uid}"
           f"/instances/{item.sop_uid}")
    return run_curl(["-o", out, "-H", f"Accept: {ACCEPT_WADO}", url])


def gateway_download(stack: Stack, item: StoredInstance, out: str = "/dev/null") -> CurlResult:
    url = (f"{stack.gw}/exams/studies/{item.study_uid}/series/{item.series_uid}/instance/{item.sop_uid}"
           f"?PatientId={item.patient_id}&fileType=application/dicom")
    return run_curl(["-o", out, "-H", f"Authorization: Bearer {stack.token}", url])


def viewer_token(stack: Stack, item: StoredInstance) -> str:
    answer = httpx.get(f"{stack.gw}/token", params={"studyUID": item.study_uid},
                       headers={"Authorization": f"Bearer {stack.token}"}, timeout=30)
    if answer.status_code != 200:
        raise BenchError(f"GET /token answered {answer.status_code}: {answer.text[:300]}")
    return str(answer.json()["token"])


def dicomweb_wado(stack: Stack, item: StoredInstance, viewer: str, out: str = "/dev/null") -> CurlResult:
    """The same WADO-RS request as `direct_wado`, through the gateway's /dicomweb with a viewer token."""
    url = (f"{stack.gw}/dicomweb/studies/{item.study_uid}/series/{item.series_uid}"
           f"/instances/{item.sop_uid}")
    return run_curl(["-o", out, "-H", f"Accept: {ACCEPT_WADO}", "-H", f"Authorization: Bearer {viewer}", url])


@dataclass
class RetrievalResult:
    size: int
    direct: list[CurlResult]
    gateway: list[CurlResult]
    dicomweb: list[CurlResult] = field(default_factory=list)
    nginx: list[CurlResult] = field(default_factory=list)


def mib_s(size: int, runs: list[CurlResult]) -> list[float]:
    return sorted(size / r.time_total / MIB for r in runs)


def bench_retrieval(stack: Stack, client: httpx.Client, runs: int) -> RetrievalResult:
    path = stack.work / "multiframe-80mib.dcm"
    item = write_multiframe(path, "BENCHWADO", frames=160)
    stow_file_direct(client, stack.direct, path)
    log(f"  stored one {item.size / MIB:.1f} MiB instance (160 frames)")
    path.unlink()
    # Warm-up, and the check that both sides hand back the whole file.
    d, g = direct_wado(stack, item), gateway_download(stack, item)
    if d.status != 200 or g.status != 200 or g.size_download != item.size or d.size_download < item.size:
        raise BenchError(f"retrieval check: direct {d.status} {d.size_download} B, gateway {g.status} "
                         f"{g.size_download} B, file {item.size} B")
    viewer = viewer_token(stack, item)
    w = dicomweb_wado(stack, item, viewer)
    if w.status != 200 or w.size_download != d.size_download:
        raise BenchError(f"/dicomweb retrieval check: {w.status} {w.size_download} B, direct {d.size_download} B")
    n = direct_wado(stack, item, base=stack.nx)
    if n.status != 200 or n.size_download != d.size_download:
        raise BenchError(f"nginx retrieval check: {n.status} {n.size_download} B, direct {d.size_download} B")
    result = RetrievalResult(item.size, [], [])
    for i in range(runs):
        d, n = direct_wado(stack, item), direct_wado(stack, item, base=stack.nx)
        g, w = gateway_download(stack, item), dicomweb_wado(stack, item, viewer)
        for r in (d, n, g, w):
            if r.status != 200:
                raise BenchError(f"retrieval answered {r.status}")
        result.direct.append(d)
        result.nginx.append(n)
        result.gateway.append(g)
        result.dicomweb.append(w)
        log(f"  retrieval run {i + 1}: direct {item.size / d.time_total / MIB:.0f} MiB/s, "
            f"nginx {item.size / n.time_total / MIB:.0f} MiB/s "
            f"(TTFB {d.time_starttransfer * 1000:.0f} ms), gateway /exams {item.size / g.time_total / MIB:.0f} MiB/s "
            f"(TTFB {g.time_starttransfer * 1000:.0f} ms), /dicomweb {item.size / w.time_total / MIB:.0f} MiB/s")
    return result


@dataclass
class StowResult:
    per_request: int
    side: int = 64  # rows = columns of the 16-bit instances (64: 9 KB files, 256: 129 KB files)
    direct: list[float] = field(default_factory=list)  # instances/s per run
    nginx: list[float] = field(default_factory=list)
    gateway: list[float] = field(default_factory=list)
    audited: list[float] = field(default_factory=list)  # the gateway with its audit trail on

    @property
    def ratio(self) -> float:
        """The median of the runs' gateway/direct ratios (each run pairs the sides request by request)."""
        return statistics.median(g / d for g, d in zip(self.gateway, self.direct, strict=True))

    @property
    def nginx_ratio(self) -> float:
        return statistics.median(n / d for n, d in zip(self.nginx, self.direct, strict=True))

    @property
    def audited_ratio(self) -> float:
        return statistics.median(a / d for a, d in zip(self.audited, self.direct, strict=True))


def stow_bodies(tag: str, n: int, per_request: int, gateway: bool, side: int = 64) -> list[tuple[bytes, str, int]]:
    """(body, content type, instances) for `n` fresh `side`x`side` 16-bit instances, `per_request` per body."""
    bodies = []
    for first in range(0, n, per_request):
        count = min(per_request, n - first)
        study, series = new_uid(), new_uid()
        files = [generated(f"STOW{tag}", study_uid=study, series_uid=series, rows=side, columns=side).data
                 for _ in range(count)]
        boundary = f"bench-{secrets.token_hex(8)}"
        if gateway:
            bodies.append((form_body(files, boundary), f"multipart/form-data; boundary={boundary}", count))
        else:
            bodies.append((related_body(files, boundary), related_type(boundary), count))
    return bodies


def referenced_count(payload: object) -> int:
    dataset = payload[0] if isinstance(payload, list) and payload else payload
    if not isinstance(dataset, dict):
        return -1
    sequence = dataset.get("00081199", {}).get("Value", [])
    return len(sequence) if isinstance(sequence, list) else -1


def post_stow(client: httpx.Client, url: str, headers: dict[str, str], body: bytes, content_type: str,
              count: int) -> float:
    """One STOW request; its duration in seconds. The answer must list every instance as stored."""
    started = time.perf_counter()
    answer = client.post(url, content=body, headers={**headers, "Content-Type": content_type})
    elapsed = time.perf_counter() - started
    if answer.status_code != 200 or referenced_count(answer.json()) != count:
        raise BenchError(f"STOW to {url} answered {answer.status_code}: {answer.text[:300]}")
    return elapsed


def send_stow(client: httpx.Client, url: str, headers: dict[str, str],
              bodies: list[tuple[bytes, str, int]]) -> float:
    """Send the bodies one after the other; instances/s."""
    elapsed = sum(post_stow(client, url, headers, *body) for body in bodies)
    return sum(count for _, _, count in bodies) / elapsed


def bench_stow(stack: Stack, client: httpx.Client, runs: int, n: int) -> list[StowResult]:
    """Fresh instances per run and side; the two sides' requests alternate one by one (direct, gateway, gateway,
    direct, ...). Orthanc's speed drifts by up to 20 % between blocks of a few seconds on this machine (its archive
    grows, its disk syncs, background work on studies stored StableAge earlier); alternating requests puts both
    sides in the same conditions, so each run's ratio is a paired measurement."""
    direct_url = f"{stack.direct}/dicom-web/studies"
    gw_url = f"{stack.gw}/exams"
    direct_headers = {"Accept": "application/dicom+json"}
    # Warm-up: connections open, code paths hot.
    send_stow(client, direct_url, direct_headers, stow_bodies("WARMD", 20, 10, gateway=False))
    send_stow(client, gw_url, stack.auth, stow_bodies("WARMG", 20, 10, gateway=True))
    send_stow(client, f"{stack.nx}/dicom-web/studies", direct_headers, stow_bodies("WARMN", 20, 10, gateway=False))
    audited_url = f"{stack.audited.url}/exams" if stack.audited is not None else None
    if audited_url is not None:
        send_stow(client, audited_url, stack.auth, stow_bodies("WARMA", 20, 10, gateway=True))
    # The target's shape (10 of 64x64 per request) and, without targets, one instance per request and instances the
    # size of an MR slice (256x256, 129 KB).
    results = [StowResult(1), StowResult(10), StowResult(10, side=256)]
    for i in range(runs):
        for result in results:
            tag = f"{result.per_request}S{result.side}R{i}"
            count = n if result.side == 64 else n // 2
            sides = [(result.direct, direct_url, direct_headers, False),
                     (result.nginx, f"{stack.nx}/dicom-web/studies", direct_headers, False),
                     (result.gateway, gw_url, stack.auth, True)]
            if audited_url is not None:
                sides.append((result.audited, audited_url, stack.auth, True))
            bodies = [stow_bodies(f"{index}{tag}", count, result.per_request, gateway=form, side=result.side)
                      for index, (_, _, _, form) in enumerate(sides)]
            time.sleep(STABLE_PAUSE_S)  # the previous run's studies become stable (Orthanc work) before this one
            seconds = [0.0] * len(sides)
            for k in range(len(bodies[0])):
                for index in [*range(k % len(sides), len(sides)), *range(k % len(sides))]:  # rotate who goes first
                    _, url, headers, _ = sides[index]
                    seconds[index] += post_stow(client, url, headers, *bodies[index][k])
            for (found, _, _, _), spent in zip(sides, seconds, strict=True):
                found.append(count / spent)
            audited = f", audited {result.audited[-1]:.0f} inst/s ({result.audited[-1] / result.direct[-1]:.0%})" \
                if result.audited else ""
            log(f"  STOW {result.side}x{result.side} {result.per_request}/request run {i + 1}: "
                f"direct {result.direct[-1]:.0f} inst/s, nginx {result.nginx[-1]:.0f} inst/s, "
                f"gateway {result.gateway[-1]:.0f} inst/s ({result.gateway[-1] / result.direct[-1]:.0%}){audited}")
            if stack.audited is not None:
                log(f"  (audit records shipped {stack.audited.drain():.1f} s after the run)")
    return results


# --- memory -----------------------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


class RssSampler:
    """Samples VmRSS every RSS_INTERVAL_S in a thread; `peak_kib` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, KeyError):
                self.peak_kib = max(self.peak_kib, proc_status(self.pid)["VmRSS"])
                self.samples += 1
            if self._stop.wait(RSS_INTERVAL_S):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Transfer:
    name: str
    status: int
    seconds: float
    bytes_moved: int
    baseline_mib: float
    peak_mib: float
    hwm_before_mib: float
    hwm_after_mib: float
    samples: int
    orthanc_hwm_mib: float | None

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.baseline_mib


def measured_transfer(stack: Stack, name: str, action: Callable[[], CurlResult], moved: Callable[[CurlResult], int],
                      ) -> tuple[Transfer, CurlResult]:
    pid = stack.gateway_pid
    time.sleep(1.0)  # idle: let the previous exchange settle
    baseline = statistics.median(proc_status(pid)["VmRSS"] for _ in range(5))
    hwm_before = proc_status(pid)["VmHWM"]
    with RssSampler(pid) as sampler:
        result = action()
    hwm_after = proc_status(pid)["VmHWM"]
    # VmHWM is the kernel's exact peak: when it rose during the transfer, the peak of the transfer is VmHWM.
    peak = max(sampler.peak_kib, hwm_after if hwm_after > hwm_before else 0)
    orthanc_pid = stack.orthanc_pid
    orthanc_hwm = None
    if orthanc_pid is not None:
        with contextlib.suppress(OSError, KeyError):
            orthanc_hwm = proc_status(orthanc_pid)["VmHWM"] / 1024
    transfer = Transfer(name, result.status, result.time_total, moved(result), baseline / 1024, peak / 1024,
                        hwm_before / 1024, hwm_after / 1024, sampler.samples, orthanc_hwm)
    return transfer, result


@dataclass
class MemoryResult:
    file_size: int
    transfers: list[Transfer]
    download_size: int | None
    notes: list[str]
    context: list[tuple[str, float]] = field(default_factory=list)  # the same transfers straight to Orthanc: seconds


def bench_memory(stack: Stack) -> MemoryResult:
    path = stack.work / "big-1gib.dcm"
    started = time.perf_counter()
    item = write_multiframe(path, "BENCHBIG", frames=BIG_FRAMES)
    log(f"  wrote a {item.size / MIB:.0f} MiB file in {time.perf_counter() - started:.1f} s")
    notes: list[str] = []
    transfers: list[Transfer] = []
    download_size = None
    try:
        answer = stack.work / "upload-answer.json"
        upload, up = measured_transfer(
            stack, "upload ~1 GiB (POST /exams)",
            lambda: run_curl(["-o", str(answer), "-H", f"Authorization: Bearer {stack.token}", "-H", "Expect:",
                              "-F", f"file=@{path};type=application/dicom", f"{stack.gw}/exams"]),
            lambda r: r.size_upload,
        )
        transfers.append(upload)
        log(f"  upload: {up.status} in {up.time_total:.1f} s, gateway RSS {upload.baseline_mib:.0f} → "
            f"{upload.peak_mib:.0f} MiB")
        if up.status != 200:
            notes.append(f"upload answered {up.status}: {answer.read_text(errors='replace')[:300]}")
            return MemoryResult(item.size, transfers, None, notes)
    finally:
        path.unlink(missing_ok=True)
    download, down = measured_transfer(stack, "download ~1 GiB (GET /exams/.../instance)",
                                       lambda: gateway_download(stack, item), lambda r: r.size_download)
    transfers.append(download)
    download_size = down.size_download
    log(f"  download: {down.status}, {down.size_download} B in {down.time_total:.1f} s, gateway RSS "
        f"{download.baseline_mib:.0f} → {download.peak_mib:.0f} MiB")
    if down.status != 200:
        notes.append(f"download answered {down.status}")
    viewer = viewer_token(stack, item)
    web, web_down = measured_transfer(stack, "download ~1 GiB (GET /dicomweb/.../instances/..., viewer token)",
                                      lambda: dicomweb_wado(stack, item, viewer), lambda r: r.size_download)
    transfers.append(web)
    log(f"  /dicomweb download: {web_down.status}, {web_down.size_download} B in {web_down.time_total:.1f} s, "
        f"gateway RSS {web.baseline_mib:.0f} → {web.peak_mib:.0f} MiB")
    if web_down.status != 200:
        notes.append(f"/dicomweb download answered {web_down.status}")
    result = MemoryResult(item.size, transfers, download_size, notes)
    # For scale: the same transfers straight to Orthanc (another file of the same size for the STOW).
    other = write_multiframe(path, "BENCHBIG2", frames=BIG_FRAMES)
    try:
        started = time.perf_counter()
        with httpx.Client(timeout=900) as client:
            stow_file_direct(client, stack.direct, path)
        result.context.append(("STOW-RS of a same-size file straight to Orthanc", time.perf_counter() - started))
    finally:
        path.unlink(missing_ok=True)
    direct = direct_wado(stack, other)
    if direct.status != 200:
        raise BenchError(f"direct WADO-RS of the 1 GiB file answered {direct.status}")
    result.context.append(("WADO-RS of it straight from Orthanc (multipart, to /dev/null)", direct.time_total))
    log("  " + "; ".join(f"{name}: {seconds:.1f} s" for name, seconds in result.context))
    return result


# --- report -----------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def audit_cost(plain: Sequence[float], audited: Sequence[float], direct: Sequence[float]) -> float:
    """The audit trail's cost, in points of the gateway/direct ratio: round by round (a round's sides run back to
    back, in rotated order), then the median. Pairing within a round keeps this machine's drift out of it: its speed
    wanders by a third from minute to minute, more than the cost being measured."""
    return statistics.median((p - a) / d for p, a, d in zip(plain, audited, direct, strict=True))


def audit_row(name: str, metric: str, audited: Sequence[float], audited_ratio: float, cost: float) -> str:
    """The same measurement through the audited gateway, and its cost against the gateway without the trail."""
    return row(f"{name}, audit trail on", metric, "", "", spread(audited), "",
               f"{audited_ratio:.0%} (cost {cost * 100:+.1f} points)", f"cost ≤ {AUDIT_COST_MAX * 100:.0f} points",
               verdict(cost <= AUDIT_COST_MAX))


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = [row("benchmark", "metric", "direct (Orthanc)", "nginx", "gateway", "nginx / direct", "gateway / direct",
                  "target", "result"), "|---" * 9 + "|"]


def spread(values: Sequence[float], digits: int = 0) -> str:
    ordered = sorted(values)
    if not ordered:
        return ""
    if len(ordered) == 1:
        return f"{ordered[0]:.{digits}f}"
    return f"{ordered[0]:.{digits}f} / **{statistics.median(ordered):.{digits}f}** / {ordered[-1]:.{digits}f}"


def ratio_text(value: float, of: float) -> str:
    return f"{value / of:.0%}" if of else ""


def latency_text(value: float, of: float) -> str:
    return f"{value / of:.2f}x ({value - of:+.2f} ms)" if of else ""


@dataclass
class Report:
    quick: bool
    machine: dict[str, str]
    versions: dict[str, str]
    setup: list[str] = field(default_factory=list)
    qido: list[QidoResult] | None = None
    scale: ScaleResult | None = None
    profile: dict[str, float] | None = None
    retrieval: RetrievalResult | None = None
    stow: list[StowResult] | None = None
    memory: MemoryResult | None = None
    errors: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"# dicom-gateway benchmark{' (--quick)' if self.quick else ''}", ""]
        out += [f"- {k}: {v}" for k, v in self.machine.items()]
        out += ["- versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items())]
        out += [f"- {line}" for line in self.setup]
        out += ["", *TABLE_HEAD]
        out += self._qido_rows() + self._retrieval_rows() + self._stow_rows()
        out += self._cpu_section() + self._profile_section() + self._scale_section() + self._memory_section()
        if self.errors:
            out += ["", "## Errors (the bench could not measure these)", ""]
            out += [f"- {e}" for e in self.errors]
        out += self._details()
        return "\n".join(out) + "\n"

    def _qido_rows(self) -> list[str]:
        rows: list[str] = []
        for result in self.qido or []:
            d, g = median_run(result.direct), median_run(result.gateway)
            n = median_run(result.nginx) if result.nginx else None
            name = f"QIDO studies?PatientID, {result.clients} client{'s' if result.clients > 1 else ''}"
            rps_target, rps_result = "", ""
            if result.clients == 4:
                rps_target = f"≥ {QIDO_RPS_RATIO_MIN:.0%}"
                rps_result = verdict(g.rps / d.rps >= QIDO_RPS_RATIO_MIN)
            rows.append(row(name, "req/s (min / **median** / max)", spread([r.rps for r in result.direct]),
                            spread([r.rps for r in result.nginx]), spread([r.rps for r in result.gateway]),
                            ratio_text(n.rps, d.rps) if n else "", ratio_text(g.rps, d.rps), rps_target, rps_result))
            p50_target, p50_result = "", ""
            if result.clients == 1:
                p50_target = f"≤ {QIDO_P50_RATIO_MAX}x direct"
                p50_result = verdict(g.p50_ms <= d.p50_ms * QIDO_P50_RATIO_MAX)
            for metric in ("p50", "p99"):
                of = attrgetter(f"{metric}_ms")
                rows.append(row(name, f"{metric} ms (median run)", f"{of(d):.2f}", f"{of(n):.2f}" if n else "",
                                f"{of(g):.2f}", latency_text(of(n), of(d)) if n else "", latency_text(of(g), of(d)),
                                p50_target if metric == "p50" else "", p50_result if metric == "p50" else ""))
            if result.audited:
                a = median_run(result.audited)
                cost = audit_cost([r.rps for r in result.gateway], [r.rps for r in result.audited],
                                  [r.rps for r in result.direct])
                rows.append(audit_row(name, "req/s (min / **median** / max)", [r.rps for r in result.audited],
                                      a.rps / d.rps, cost))
                rows.append(row(f"{name}, audit trail on", "p50 ms (median run)", f"{d.p50_ms:.2f}", "",
                                f"{a.p50_ms:.2f}", "", latency_text(a.p50_ms, d.p50_ms), "", ""))
            d_err = sum(r.errors for r in result.direct)
            n_err = sum(r.errors for r in result.nginx)
            g_err = sum(r.errors for r in result.gateway) + sum(r.errors for r in result.audited)
            if d_err or n_err or g_err:
                rows.append(row(name, "errors (non-2xx + socket)", str(d_err), str(n_err), str(g_err), "", "", "0",
                                verdict(g_err == 0)))
        return rows

    def _retrieval_rows(self) -> list[str]:
        r = self.retrieval
        if r is None:
            return []
        d, n, g = mib_s(r.size, r.direct), mib_s(r.size, r.nginx), mib_s(r.size, r.gateway)
        md = statistics.median(d)
        n_ratio = ratio_text(statistics.median(n), md) if n else ""
        name = f"Retrieve one {r.size / MIB:.0f} MiB instance (160 frames)"
        target = f"≥ {RETRIEVAL_RATIO_MIN:.0%}"

        def ms(runs: list[CurlResult]) -> str:
            if not runs:
                return ""
            return (f"{statistics.median(x.time_total for x in runs) * 1000:.0f} / "
                    f"{statistics.median(x.time_starttransfer for x in runs) * 1000:.0f}")

        rows = [
            row(f"{name} via /exams", "MiB/s (min / **median** / max)", spread(d), spread(n), spread(g), n_ratio,
                ratio_text(statistics.median(g), md), target,
                verdict(statistics.median(g) / md >= RETRIEVAL_RATIO_MIN)),
            row(f"{name} via /exams", "total / time to first byte, ms (median)", ms(r.direct), ms(r.nginx),
                ms(r.gateway), "", "", "", ""),
        ]
        if r.dicomweb:
            w = mib_s(r.size, r.dicomweb)
            rows.append(row(f"{name} via /dicomweb, viewer token, the same multipart request",
                            "MiB/s (min / **median** / max)", spread(d), spread(n), spread(w), n_ratio,
                            ratio_text(statistics.median(w), md), target,
                            verdict(statistics.median(w) / md >= RETRIEVAL_RATIO_MIN)))
        return rows

    def _stow_rows(self) -> list[str]:
        # Targets for 64x64 instances, 1 and 10 per request (issue 15). The 129 KB instances are shown without one.
        rows = []
        for result in self.stow or []:
            least = STOW_RATIO_MIN.get(result.per_request) if result.side == 64 else None
            kib = {64: 9, 256: 129}.get(result.side, 0)
            name = f"STOW {result.side}x{result.side} 16-bit ({kib} KB), {result.per_request}/request, sequential, " \
                   "interleaved"
            rows.append(row(name, "instances/s (min / **median** / max)", spread(result.direct),
                            spread(result.nginx), spread(result.gateway),
                            f"{result.nginx_ratio:.0%}" if result.nginx else "", f"{result.ratio:.0%}",
                            f"≥ {least:.0%}" if least is not None else "(none)",
                            verdict(result.ratio >= least) if least is not None else ""))
            if result.audited:
                rows.append(audit_row(name, "instances/s (min / **median** / max)", result.audited,
                                      result.audited_ratio, audit_cost(result.gateway, result.audited, result.direct)))
        return rows

    def _cpu_section(self) -> list[str]:
        """CPU per QIDO request of each side, and as a share of Orthanc's own per request (the ratio travels between
        machines; the µs do not)."""
        if not self.qido:
            return []
        out = ["", "CPU per QIDO request (utime+stime from /proc of each side's processes over its runs, divided by "
               "the requests answered; median of the runs; Orthanc's own from the direct runs):", "",
               row("QIDO", "Orthanc µs/request", "nginx µs/request", "nginx ÷ Orthanc", "gateway µs/request",
                   "gateway ÷ Orthanc", "target", "result"), "|---" * 8 + "|"]
        for result in self.qido:
            orthanc = statistics.median(r.orthanc_us for r in result.direct)
            nginx = statistics.median(r.cpu_us for r in result.nginx) if result.nginx else 0.0
            gateway = statistics.median(r.cpu_us for r in result.gateway)
            out.append(row(f"{result.clients} client{'s' if result.clients > 1 else ''}", f"{orthanc:.0f}",
                           f"{nginx:.0f}", f"{nginx / orthanc:.2f}x", f"{gateway:.0f}", f"{gateway / orthanc:.2f}x",
                           f"≤ {QIDO_CPU_RATIO_MAX}x", verdict(gateway / orthanc <= QIDO_CPU_RATIO_MAX)))
            if result.audited:
                audited = statistics.median(r.cpu_us for r in result.audited)
                out.append(row(f"{result.clients} client{'s' if result.clients > 1 else ''}, audit trail on", "", "",
                               "", f"{audited:.0f}", f"{audited / orthanc:.2f}x", "", ""))
        return out

    def _profile_section(self) -> list[str]:
        if not self.profile:
            return []
        measured, before = layers.baseline()
        return ["", "Where the time goes: the gateway's CPU per QIDO request (1 client) by layer, from py-spy's "
                f"samples (400 Hz, {PROFILE_SECONDS} s) sorted by the frame that was running, times the CPU per "
                "request "
                "measured over the same run. Before: " + measured + ".", "",
                *layers.table(self.profile, before)]

    def _scale_section(self) -> list[str]:
        s = self.scale
        if s is None or not s.direct:
            return []
        direct = statistics.median(r.rps for r in s.direct)
        out = ["", f"QIDO at {SCALE_CLIENTS} clients through `dicom-gateway serve --workers N` (PostgreSQL store, "
               "Orthanc on the same two cores):", "",
               row("workers", "req/s (min / **median** / max)", "÷ direct", "gateway CPU µs/request",
                   "CPU-bound capacity, req/s per core given to the gateway"), "|---" * 5 + "|",
               row("direct (Orthanc)", spread([r.rps for r in s.direct]), "100%", "", "")]
        for workers, runs in s.workers.items():
            cpu = statistics.median(r.cpu_us for r in runs)
            out.append(row(str(workers), spread([r.rps for r in runs]),
                           ratio_text(statistics.median(r.rps for r in runs), direct), f"{cpu:.0f}",
                           f"{1e6 / cpu:.0f}" if cpu else ""))
        return out

    def _memory_section(self) -> list[str]:
        m = self.memory
        if m is None:
            return []
        out = ["", f"Gateway memory while a {m.file_size / MIB:.0f} MiB single-instance file passes through it "
               f"(VmRSS sampled every {RSS_INTERVAL_S * 1000:.0f} ms from /proc, plus VmHWM):", "",
               "| transfer | status | time s | MiB/s | gateway RSS before MiB | peak MiB | growth MiB | target "
               "| result | Orthanc VmHWM MiB |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for t in m.transfers:
            ok = t.status == 200 and t.growth_mib <= RSS_GROWTH_MAX_MIB
            orthanc = f"{t.orthanc_hwm_mib:.0f}" if t.orthanc_hwm_mib is not None else "?"
            rate = t.bytes_moved / t.seconds / MIB if t.seconds else 0.0
            out.append(f"| {t.name} | {t.status} | {t.seconds:.1f} | {rate:.0f} | {t.baseline_mib:.1f} | "
                       f"{t.peak_mib:.1f} | {t.growth_mib:.1f} | ≤ {RSS_GROWTH_MAX_MIB:.0f} | {verdict(ok)} | "
                       f"{orthanc} |")
        if m.download_size is not None:
            same = m.download_size == m.file_size
            out.append(f"| downloaded size = uploaded size | | | | | | {m.download_size} vs {m.file_size} B | equal "
                       f"| {verdict(same)} | |")
        for name, seconds in m.context:
            out.append(f"| for scale: {name} | 200 | {seconds:.1f} | {m.file_size / seconds / MIB:.0f} | | | | | | |")
        out += [f"\n{note}" for note in m.notes]
        return out

    def _details(self) -> list[str]:
        out = ["", "<details><summary>All runs</summary>", ""]
        for result in self.qido or []:
            for side, runs in (("direct", result.direct), ("nginx", result.nginx), ("gateway", result.gateway),
                               ("audited", result.audited)):
                if runs:
                    out.append(f"- QIDO c={result.clients} {side}: {wrk_runs(runs)}")
        if self.scale is not None:
            out.append(f"- QIDO c={SCALE_CLIENTS} direct: {wrk_runs(self.scale.direct)}")
            for workers, runs in self.scale.workers.items():
                out.append(f"- QIDO c={SCALE_CLIENTS} gateway, {workers} worker(s): {wrk_runs(runs)}")
        if self.retrieval is not None:
            for side, curls in (("direct", self.retrieval.direct), ("nginx", self.retrieval.nginx),
                                ("gateway /exams", self.retrieval.gateway),
                                ("gateway /dicomweb", self.retrieval.dicomweb)):
                listed = "; ".join(f"{c.time_total * 1000:.0f} ms (TTFB {c.time_starttransfer * 1000:.0f})"
                                   for c in curls)
                out.append(f"- retrieval {side}: {listed}")
        for stow in self.stow or []:
            out.append(f"- STOW {stow.side}x{stow.side} {stow.per_request}/request direct: "
                       f"{', '.join(f'{v:.0f}' for v in stow.direct)}; "
                       f"nginx: {', '.join(f'{v:.0f}' for v in stow.nginx)}; "
                       f"gateway: {', '.join(f'{v:.0f}' for v in stow.gateway)} inst/s; per-run ratio: "
                       f"{', '.join(f'{g / d:.0%}' for g, d in zip(stow.gateway, stow.direct, strict=True))}")
            if stow.audited:
                out.append(f"- STOW {stow.side}x{stow.side} {stow.per_request}/request audited: "
                           f"{', '.join(f'{v:.0f}' for v in stow.audited)} inst/s; per-run ratio: "
                           f"{', '.join(f'{a / d:.0%}' for a, d in zip(stow.audited, stow.direct, strict=True))}")
        if self.memory is not None:
            for t in self.memory.transfers:
                out.append(f"- {t.name}: VmHWM {t.hwm_before_mib:.1f} → {t.hwm_after_mib:.1f} MiB, "
                           f"{t.samples} samples")
        out += ["", "</details>"]
        return out


def wrk_runs(runs: Sequence[WrkRun]) -> str:
    return "; ".join(f"{r.rps:.0f} req/s p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms, CPU {r.cpu_us:.0f} µs/request "
                     f"(Orthanc {r.orthanc_us:.0f}) ({r.requests} req, {r.errors} err)" for r in runs)


def machine_info() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"nproc {len(os.sched_getaffinity(0))}, {model}, RAM {memory}, "
                   f"{platform.system()} {platform.release()}",
    }


def tool_version(command: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        lines = (result.stdout or result.stderr).strip().splitlines()
        if lines:
            return lines[0]
    return "?"


def versions(stack: Stack | None) -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for package in ("dicom-gateway", "starlette", "uvicorn", "aiohttp", "httpx", "pydicom", "python-multipart",
                    "uvloop", "httptools"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    revision = tool_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway"], capture_output=True,
                           text=True, check=False).stdout.strip()
    found["git"] = revision + (" (gateway/ modified)" if dirty else "")
    if stack is not None:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            found["Orthanc"] = str(httpx.get(f"{stack.direct}/system", timeout=5).json()["Version"])
            found["orthanc-dicomweb"] = str(httpx.get(f"{stack.direct}/plugins/dicom-web", timeout=5).json()["Version"])
    wrk = tool_version(["wrk", "--version"])
    found["wrk"] = wrk.split(" [")[0].removeprefix("wrk ")
    found["nginx"] = tool_version(["nginx", "-v"]).removeprefix("nginx version: nginx/")
    found["curl"] = tool_version(["curl", "--version"]).split()[1] if shutil.which("curl") else "?"
    return found


# --- main -------------------------------------------------------------------------------------------------------


def ensure_tools() -> None:
    if shutil.which("curl") is None:
        raise BenchError("curl is missing: apt-get install -y curl")
    for tool in ("wrk", "nginx"):
        install_tool(tool)


def install_tool(tool: str) -> None:
    """The Debian package of that name, when its command is missing."""
    if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
        log(f"{tool} is missing; installing the Debian package (apt-get install -y {tool})")
        apt = ["apt-get", "install", "-y", "--no-install-recommends", tool]
        result = subprocess.run(apt if os.geteuid() == 0 else ["sudo", "-n", *apt], capture_output=True, text=True,
                                check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode != 0 or (shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()):
            raise BenchError(f"{tool} is missing and could not be installed; run: sudo apt-get install -y {tool}\n"
                             f"{result.stderr[-500:]}")


def start_gateway(orthanc: Orthanc, work: Path, secret: str, name: str, workers: int = 1,
                  **settings: str) -> GatewayProcess:
    port = free_port()
    env = gateway_env(**{
        "pacs_service_url": orthanc.dicomweb_url, "pacs_profile": "orthanc", "log_level": "info",
        "public_base_url": f"http://127.0.0.1:{port}", "auth_mode": "jwt", "auth_jwt_secret": secret,
        "database_url": f"sqlite:///{work / name}.db",
        "tmpdir": str(work),  # the gateway spools uploads here, and this directory is removed at the end
        **settings,
    })
    gateway = GatewayProcess(env, work / f"{name}.log", port, ("--workers", str(workers)) if workers > 1 else ())
    log(f"starting the {name} on {port}")
    gateway.start()
    return gateway


def start_audited(orthanc: Orthanc, work: Path, secret: str, syslog: Rsyslog) -> Audited:
    """The gateway as `start_gateway` starts it, with AUDIT_TRAIL=on and its records shipped to `syslog`."""
    syslog.start()
    gateway = start_gateway(orthanc, work, secret, "audited-gateway", audit_trail="on",
                            audit_syslog_url=syslog.url, audit_source_id="bench")
    return Audited(gateway, work / "audited-gateway.db", syslog)


def section(report: Report, name: str, run: Callable[[], None]) -> None:
    log(name)
    try:
        run()
    except (BenchError, httpx.HTTPError, subprocess.SubprocessError, OSError) as exc:
        report.errors.append(f"{name}: {exc}")
        log(f"ERROR in {name}: {exc}")
        traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per QIDO setting, 1 run per other test")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (Orthanc data, logs)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the 1 GiB transfers")
    parser.add_argument("--skip-audit", action="store_true",
                        help="leave out the second gateway, the one with its audit trail on")
    parser.add_argument("--skip-scale", action="store_true",
                        help=f"leave out QIDO at {SCALE_CLIENTS} clients through 1 and 2 gateway workers")
    args = parser.parse_args(argv)
    runs, seconds = (1, 3.0) if args.quick else (10, 3.0)  # QIDO: rounds of three sides, each side `seconds`
    wall = time.perf_counter()
    try:
        ensure_tools()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="dicom-gateway-bench-"))
    orthanc = Orthanc(work / "orthanc")
    gateway: GatewayProcess | None = None
    audited: Audited | None = None
    syslog = Rsyslog(work / "rsyslog")
    postgres = Postgres(work / "postgres")
    nginx: Nginx | None = None
    report = Report(args.quick, machine_info(), {})
    try:
        log(f"starting Orthanc on {orthanc.http_port}")
        orthanc.start()
        nginx = Nginx(work / "nginx", orthanc.url)
        nginx.start()
        log(f"started nginx on {nginx.port}")
        secret = secrets.token_hex(32)
        gateway = start_gateway(orthanc, work, secret, "gateway", audit_trail="off")
        if not args.skip_audit:
            audited = start_audited(orthanc, work, secret, syslog)
        stack = Stack(orthanc, gateway, clinician_token(secret), work, audited, nginx)
        report.versions = versions(stack)
        client = httpx.Client(timeout=120, limits=httpx.Limits(keepalive_expiry=0.5))
        with client:

            def setup() -> None:
                stored, took = populate(stack, QIDO_PATIENTS)
                report.setup.append(f"population: {stored} CT 512x512 16-bit instances ({QIDO_PATIENTS} patients x "
                                    f"1 study x {QIDO_INSTANCES_PER_PATIENT}) stored directly in {took:.1f} s "
                                    f"({stored / took:.0f} inst/s, batches of {POPULATION_BATCH}, "
                                    f"{POPULATION_IN_FLIGHT} in flight)")
                log(f"  {report.setup[-1]}")
                check_qido(stack, client)

            def qido() -> None:
                report.qido = bench_qido(stack, runs, seconds, QIDO_PATIENTS)

            def scale() -> None:
                postgres.start()
                report.scale = bench_scale(stack, secret, postgres.new_database(), runs, seconds)

            def profile() -> None:
                report.profile = bench_profile(stack)

            def retrieval() -> None:
                report.retrieval = bench_retrieval(stack, client, RETRIEVAL_RUNS)

            def stow() -> None:
                report.stow = bench_stow(stack, client, STOW_RUNS if runs > 1 else 1, STOW_N if runs > 1 else 300)

            def memory() -> None:
                report.memory = bench_memory(stack)

            section(report, "population", setup)
            if not report.errors:
                section(report, f"QIDO ({runs} x {seconds:g} s per side and client count)", qido)
                section(report, "where the gateway's time goes (py-spy, 1 client)", profile)
                if not args.skip_scale:
                    section(report, f"QIDO at {SCALE_CLIENTS} clients, 1 and 2 gateway workers", scale)
            section(report, "retrieval of an 80 MiB instance", retrieval)
            section(report, "STOW (runs of fresh instances per shape and side)", stow)
            if not args.skip_memory:
                section(report, "gateway RSS during 1 GiB transfers", memory)
        report.setup.append(
            "gateway: one `dicom-gateway serve` process (uvicorn, 1 worker), AUTH_MODE=jwt (HS256 clinician token "
            "on every request), LOG_LEVEL=info (an access line per request), "
            "PACS_PROFILE=orthanc, AUDIT_TRAIL=off; "
            + ("the audited gateway: the same with AUDIT_TRAIL=on, its SQLite store in the bench's directory, "
               "shipping to a private rsyslogd over TCP (each round of requests waits until every record is "
               "shipped before the next side runs); " if audited is not None else "")
            + "nginx: tests/support/nginx.py config (one worker, keep-alive upstream, nothing buffered, an access "
            "line per request); "
            + f"Orthanc: deploy/dev/orthanc.sh config; "
            f"everything on loopback, clients and servers sharing the cores; whole bench took "
            f"{time.perf_counter() - wall:.0f} s")
    except (BenchError, httpx.HTTPError, subprocess.SubprocessError, OSError, RuntimeError) as exc:
        report.errors.append(f"setup: {exc}")
        traceback.print_exc()
    finally:
        for process in (gateway, audited.gateway if audited is not None else None):
            if process is not None:
                log(f"stopping the gateway on {process.port}")
                process.stop()
        if audited is not None:
            syslog.stop()
        if nginx is not None:
            nginx.stop()
        postgres.stop()
        log("stopping Orthanc")
        try:
            orthanc.stop()
        except (subprocess.SubprocessError, OSError) as exc:
            report.errors.append(f"stopping Orthanc: {exc}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report.markdown()
    print()
    print(text)
    RESULTS.write_text(text)
    log(f"wrote {RESULTS.relative_to(REPO)}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
