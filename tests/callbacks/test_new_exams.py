"""New-exam detection from Orthanc's change feed (`gateway.callbacks.new_exams`) across restarts, on SQLite and
PostgreSQL, against a private Orthanc that the tests kill with SIGKILL.

Orthanc keeps its not-yet-stable studies in memory: killed within `StableAge` (2 s here) of a study's last
instance, it never emits that study's `StableStudy`. The follower notes every study the feed names and announces
each once Orthanc reports it stable, so each test asserts every study announced exactly once: after the kill
within `StableAge`, within StableAge + poll interval + a second of the restart, and across the restart matrix
(the gateway, the PACS, both; studies stored before, around and after their stability at the moment of the
restart), whose table the test prints; and a `dicom-gateway serve` process SIGKILLed, alone and with Orthanc.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from tests.callbacks.test_callbacks import gateway, of_study, serve_env, stow_direct
from tests.support.dicom_factory import generated, new_uid
from tests.support.orthanc import Orthanc
from tests.support.processes import GatewayProcess
from tests.support.receivers import Receiver, receivers, wait_until

STABLE_AGE_S = 2.0  # deploy/dev/orthanc.sh's StableAge
POLL_S = 0.1
SETTINGS = {"pacs_profile": "orthanc", "new_exam_detection": "orthanc-changes", "new_exam_poll_s": str(POLL_S)}
# When, before the restart, each study's last instance was stored: stable long since, about to become stable (the
# feed's StableStudy may or may not be out), and far from stable (Orthanc forgets it).
TIMINGS = {"after stability": STABLE_AGE_S + 1.5, "at stability": STABLE_AGE_S, "before stability": 0.5}


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def kill_and_restart(orthanc: Orthanc) -> None:
    pid = int((orthanc.run_dir / "orthanc.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        assert time.monotonic() < deadline, "Orthanc survived SIGKILL"
        time.sleep(0.01)
    orthanc.start()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def store_study(orthanc: Orthanc, patient: str, instances: int = 2) -> str:
    study, series = new_uid(), new_uid()
    stow_direct(orthanc.dicomweb_url, [generated(patient, study_uid=study, series_uid=series).data
                                       for _ in range(instances)])
    return study


class Gateway:
    """The gateway in front of `pacs`, started and stopped by the test; its store survives it."""

    def __init__(self, database_url: str, pacs: Orthanc, subscribers: list[Receiver]) -> None:
        self._settings = {**SETTINGS, "pacs_service_url": pacs.dicomweb_url}
        self._database_url = database_url
        self._subscribers = subscribers
        self._running: AsyncExitStack | None = None
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        stack = AsyncExitStack()
        self.client = await stack.enter_async_context(gateway(self._database_url, self._subscribers,
                                                              **self._settings))
        self._running = stack
        await asyncio.sleep(0.3)  # the follower has read the feed once (on a first start: taken its position)

    async def stop(self) -> None:
        if self._running is not None:
            await self._running.aclose()
            self._running = None
            self.client = None

    async def metrics(self) -> dict[str, float]:
        """The scraped samples, by name and labels as written (`name{label="value"}`)."""
        assert self.client is not None
        answer = await self.client.get("/-/metrics")
        assert answer.status_code == 200
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in answer.text.splitlines() if line and not line.startswith("#")}


@pytest.fixture
async def subscribers() -> AsyncIterator[list[Receiver]]:
    with receivers(Receiver(), Receiver()) as subs:
        yield subs


def announced(subs: list[Receiver], study: str) -> list[int]:
    """How many times each subscriber was told of `study`."""
    return [len(of_study(r, study)) for r in subs]


async def test_a_pacs_killed_within_stable_age_still_announces_the_study_once(
        database_url: str, pacs: Orthanc, subscribers: list[Receiver]) -> None:
    gw = Gateway(database_url, pacs, subscribers)
    await gw.start()
    try:
        study = await asyncio.to_thread(store_study, pacs, "KILLED-1")
        stored = time.monotonic()
        await asyncio.sleep(0.5)  # well within StableAge: Orthanc will never emit this study's StableStudy
        await asyncio.to_thread(kill_and_restart, pacs)
        restarted = time.monotonic()
        await wait_until(lambda: all(announced(subscribers, study)), timeout=30)
        took, since_stored = time.monotonic() - restarted, time.monotonic() - stored
        print(f"\nannounced {took:.2f} s after Orthanc was back, {since_stored:.2f} s after the study was stored")
        assert since_stored <= STABLE_AGE_S + POLL_S + 1.0, since_stored  # Orthanc's restart included
        await asyncio.sleep(1.5)  # a second announcement would come within a few polls
        assert announced(subscribers, study) == [1, 1]
        [body] = of_study(subscribers[0], study)
        assert body["PatientID"] == "KILLED-1"
        assert body["NumberOfStudyRelatedInstances"] == 2
        samples = await gw.metrics()
        feed = '{feed="orthanc-changes"}'
        assert samples[f"gateway_new_exams_announced_total{feed}"] == 1
        assert samples[f"gateway_new_exam_feed_lag{feed}"] == 0
        assert time.time() - samples[f"gateway_new_exam_feed_last_poll_timestamp_seconds{feed}"] < 5
        deadline = time.monotonic() + 10
        while (samples := await gw.metrics())['gateway_callback_deliveries{state="delivered"}'] < 2:
            assert time.monotonic() < deadline, samples  # one study, two subscribers: both marked delivered
            await asyncio.sleep(0.1)
        assert samples['gateway_callback_deliveries{state="pending"}'] == 0
        assert samples['gateway_callback_deliveries{state="failed"}'] == 0
    finally:
        await gw.stop()


# On SQLite only: the PostgreSQL side of the follower is the same code, and the Orthanc-kill test above and the Azure
# feed's v1 run drive it on PostgreSQL (the matrix took 17 s per store).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_study_is_announced_once_across_the_restart_matrix(
        database_url: str, pacs: Orthanc, subscribers: list[Receiver]) -> None:
    gw = Gateway(database_url, pacs, subscribers)

    async def restart_gateway() -> None:
        await gw.stop()
        await asyncio.sleep(0.5)
        await gw.start()

    async def restart_pacs() -> None:
        await asyncio.to_thread(kill_and_restart, pacs)

    async def restart_both() -> None:
        await gw.stop()
        await asyncio.to_thread(kill_and_restart, pacs)
        await gw.start()

    restarts: dict[str, Callable[[], Awaitable[None]]] = {
        "gateway": restart_gateway, "PACS (SIGKILL)": restart_pacs, "both": restart_both}
    studies: dict[tuple[str, str], str] = {}
    took: dict[str, float] = {}
    await gw.start()
    try:
        for name, restart in restarts.items():
            started = time.monotonic()
            for when, before in TIMINGS.items():  # stored `before` seconds ahead of the restart, oldest first
                await asyncio.sleep(max(0.0, started + TIMINGS["after stability"] - before - time.monotonic()))
                studies[name, when] = await asyncio.to_thread(store_study, pacs, f"MATRIX-{len(studies)}")
            await asyncio.sleep(max(0.0, started + TIMINGS["after stability"] - time.monotonic()))
            await restart()
            restarted = time.monotonic()
            mine = [studies[name, when] for when in TIMINGS]
            await wait_until(lambda mine=mine: all(all(announced(subscribers, s)) for s in mine),  # type: ignore[misc]
                             timeout=30)
            took[name] = time.monotonic() - restarted
        await asyncio.sleep(1.5)  # time for any second announcement to arrive
    finally:
        await gw.stop()
    counts = {key: announced(subscribers, study) for key, study in studies.items()}
    print(f"\nrestart matrix ({database_url.split(':')[0]}): times each study was announced, per subscriber")
    print(f"{'restarted':<16}" + "".join(f"{when:>18}" for when in TIMINGS) + "   all announced after")
    for name in restarts:
        print(f"{name:<16}" + "".join(f"{counts[name, when]!s:>18}" for when in TIMINGS)
              + f"   {took[name]:.1f} s")
    assert all(c == [1, 1] for c in counts.values()), counts
    assert all(t <= STABLE_AGE_S + POLL_S + 1.0 + 1.0 for t in took.values()), took  # + the gateway's start


async def test_a_gateway_killed_with_sigkill_and_its_pacs_too_still_announce_each_study_once(
        pacs: Orthanc, subscribers: list[Receiver], tmp_path: Path) -> None:
    """The matrix above stops the gateway politely; here the `dicom-gateway serve` process is SIGKILLed, once
    alone and once with Orthanc, each time 0.5 s after a study's last instance (before its stability). On SQLite
    only (the matrix runs on both databases; this keeps the suite within its time budget)."""
    database_url = f"sqlite:///{tmp_path / 'events.db'}"
    env = {**serve_env(database_url, subscribers, **SETTINGS), "PACS_SERVICE_URL": pacs.dicomweb_url}
    process = GatewayProcess(env, tmp_path / "gw.log")
    process.start()
    await asyncio.sleep(0.5)  # the follower has taken its starting position
    studies: list[str] = []
    try:
        for also_pacs in (False, True):
            studies.append(await asyncio.to_thread(store_study, pacs, f"SIGKILL-{len(studies)}"))
            await asyncio.sleep(0.5)
            process.kill()
            if also_pacs:
                await asyncio.to_thread(kill_and_restart, pacs)
            process = GatewayProcess(env, tmp_path / "gw.log")
            process.start()
            await wait_until(lambda: all(all(announced(subscribers, s)) for s in studies), timeout=30)
        await asyncio.sleep(1.5)  # time for a second announcement
    finally:
        process.stop()
    assert [announced(subscribers, s) for s in studies] == [[1, 1], [1, 1]]
