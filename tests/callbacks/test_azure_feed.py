"""New-exam detection from Microsoft's DICOM service change feed (`gateway.callbacks.azure_feed`), against the
strict simulator of `tests/support/changefeed_simulator.py` (no Azure here), on SQLite and PostgreSQL: the
simulator's own strictness (paging by version, states, limits); 1,000 instances over 50 studies with replacements,
deletions and gaps in the sequence numbers interleaved and the gateway restarted halfway give exactly one
announcement per study that still exists; v1's sequence windows are stepped over a gap wider than a page."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from gateway.callbacks.azure_feed import api_version
from gateway.settings import SettingsError
from tests.callbacks.test_callbacks import gateway, of_study
from tests.conftest import make_settings
from tests.support.changefeed_simulator import AzureDicomSimulator, azure_simulator
from tests.support.receivers import Receiver, receivers, wait_until

QUIET_S = 2.0
LONG_QUIET_S = 5.0


@pytest.fixture
def simulator() -> Iterator[AzureDicomSimulator]:
    with azure_simulator() as sim:
        yield sim


def settings(sim: AzureDicomSimulator, version: int, quiet_s: float = QUIET_S) -> dict[str, str]:
    return {"pacs_service_url": sim.url(version), "pacs_profile": "azure", "new_exam_detection": "azure-changefeed",
            "new_exam_poll_s": "0.05", "new_exam_quiet_s": str(quiet_s)}


# --- the simulator is as strict as the service -----------------------------------------------------------------------


def test_the_simulator_pages_v1_by_sequence_windows_and_v2_by_rows(simulator: AzureDicomSimulator) -> None:
    simulator.store("1.1", "1.1.1", "1.1.1.1", patient_id="P1")
    simulator.skip(150)  # identities a failed store used up
    simulator.store("1.2", "1.2.1", "1.2.1.1", patient_id="P2")
    v1, v2 = simulator.url(1), simulator.url(2)
    assert [e["sequence"] for e in httpx.get(f"{v1}/changefeed?offset=0&limit=100").json()] == [1]
    assert httpx.get(f"{v1}/changefeed?offset=1&limit=100").json() == []  # a gap: empty, later entries exist
    assert [e["sequence"] for e in httpx.get(f"{v1}/changefeed?offset=101&limit=100").json()] == [152]
    assert [e["sequence"] for e in httpx.get(f"{v2}/changefeed?offset=1&limit=100").json()] == [152]  # rows
    assert httpx.get(f"{v1}/changefeed/latest").json()["sequence"] == 152
    assert len(httpx.get(f"{v1}/changefeed").json()) == 1  # v1's default limit is 10: the window 1-10


@pytest.mark.parametrize(("version", "query"), [
    (1, "limit=0"), (1, "limit=101"), (2, "limit=201"), (1, "offset=-1"), (2, "offset=x"),
    (1, "includeMetadata=yes"), (2, "startTime=yesterday"),
    (2, "startTime=2026-01-02T00:00:00Z&endTime=2026-01-01T00:00:00Z"),
])
def test_the_simulator_refuses_what_the_service_refuses(simulator: AzureDicomSimulator, version: int,
                                                        query: str) -> None:
    answer = httpx.get(f"{simulator.url(version)}/changefeed?{query}")
    assert answer.status_code == 400
    assert "error" in answer.json()


def test_an_entrys_state_is_its_instances_state_now(simulator: AzureDicomSimulator) -> None:
    simulator.store("1.1", "1.1.1", "1.1.1.1", patient_id="P1")
    simulator.store("1.1", "1.1.1", "1.1.1.2", patient_id="P1")
    simulator.store("1.1", "1.1.1", "1.1.1.1", patient_id="P1")  # stored again: a new version
    simulator.delete("1.1.1.2")
    entries = httpx.get(f"{simulator.url(2)}/changefeed?includeMetadata=true").json()
    assert [(e["action"], e["state"]) for e in entries] == [
        ("Create", "Replaced"), ("Create", "Deleted"), ("Update", "Current"), ("Delete", "Deleted")]
    assert ["metadata" in e for e in entries] == [False, False, True, False]  # only what exists has metadata
    assert httpx.get(f"{simulator.url(2)}/studies?PatientName=x").status_code in (200, 204)  # searchable: accepted
    assert httpx.get(f"{simulator.url(2)}/studies?Modality=CT").status_code == 400  # a series attribute
    simulator.delete("1.1.1.1")
    assert httpx.get(f"{simulator.url(2)}/studies?StudyInstanceUID=1.1").status_code == 204


def test_the_api_version_is_the_service_urls() -> None:
    assert api_version("https://x.dicom.azurehealthcareapis.com/v1") == 1
    assert api_version("https://x.dicom.azurehealthcareapis.com/v1.0-prerelease/") == 1
    assert api_version("https://x.dicom.azurehealthcareapis.com/v2") == 2
    assert api_version("https://x.dicom.azurehealthcareapis.com/") == 2


# --- the follower ----------------------------------------------------------------------------------------------------


class Gateway:
    def __init__(self, database_url: str, subs: list[Receiver], values: dict[str, str]) -> None:
        self._database_url = database_url
        self._subs = subs
        self._values = values
        self._stack: AsyncExitStack | None = None
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._stack = AsyncExitStack()
        self.client = await self._stack.enter_async_context(gateway(self._database_url, self._subs, **self._values))
        await asyncio.sleep(0.2)  # the follower took its starting position

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None


def announcements(subs: list[Receiver]) -> list[dict[str, Any]]:
    return [json.loads(d.body) for d in subs[0].deliveries]


# Each version on one of the two stores (not all four pairs): the store's side of the follower is the same for both
# versions, and the four runs took a minute of the suite.
@pytest.mark.parametrize(("database_url", "version"), [("sqlite", 2), ("postgresql", 1)], indirect=["database_url"])
async def test_a_thousand_instances_over_fifty_studies_give_one_announcement_per_remaining_study(
        database_url: str, simulator: AzureDicomSimulator, version: int) -> None:
    rng = random.Random(14)
    studies = [f"1.2.826.0.1.3680043.10.14.{n}" for n in range(50)]
    operations = [(n % 50, n // 50) for n in range(1000)]  # (study, instance): 20 instances per study
    rng.shuffle(operations)
    gone_studies = set(rng.sample(range(50), 5))  # every instance of these is deleted again
    with receivers(Receiver(), Receiver()) as subs:
        # Quiet for longer than the whole run, restart included, takes on a slow machine: a study announced before
        # its deletion would rightly be announced (it existed then), and the count would depend on timing.
        gw = Gateway(database_url, subs, settings(simulator, version, quiet_s=LONG_QUIET_S))
        await gw.start()
        try:
            stored: list[tuple[int, int]] = []
            for step, (study, instance) in enumerate(operations):
                sop = f"{studies[study]}.{instance}"
                simulator.store(studies[study], f"{studies[study]}.1", sop, patient_id=f"AZ-{study}",
                                modality="MR" if study % 2 else "CT")  # one series per study, one modality
                stored.append((study, instance))
                if step % 7 == 0:  # a replacement: the same instance stored again
                    again = rng.choice(stored)
                    simulator.store(studies[again[0]], f"{studies[again[0]]}.1", f"{studies[again[0]]}.{again[1]}",
                                    patient_id=f"AZ-{again[0]}", modality="MR" if again[0] % 2 else "CT")
                if step % 13 == 0:
                    simulator.skip(rng.choice([1, 3, 120]))  # gaps, some wider than a v1 page
                if step % 100 == 99:
                    await asyncio.sleep(0.05)  # the follower reads while the archive fills
                if step == 500:
                    await gw.stop()  # a restart halfway
                    await gw.start()
            # Deletions, interleaved with the last stores: a few instances here and there, and whole studies.
            for study, instance in rng.sample([s for s in stored if s[0] not in gone_studies], 40):
                sop = f"{studies[study]}.{instance}"
                if sop in simulator.instances:
                    simulator.delete(sop)
            for study in gone_studies:
                for sop in [s for s, i in simulator.instances.items() if i.study == studies[study]]:
                    simulator.delete(sop)
            remaining = {studies[n] for n in range(50)} - {studies[n] for n in gone_studies}
            await wait_until(lambda: all({a["StudyInstanceUID"] for a in announcements([r])} >= remaining
                                         for r in subs), timeout=60)
            await asyncio.sleep(1.0)  # time for a second announcement, or one of a deleted study
            assert gw.client is not None
            scraped = (await gw.client.get("/-/metrics")).text
            # Counted since the restart: the studies announced by this gateway process.
            assert 'gateway_new_exam_feed_lag{feed="azure-changefeed"} 0.0' in scraped
            assert 'gateway_new_exams_announced_total{feed="azure-changefeed"}' in scraped
        finally:
            await gw.stop()
    # One announcement per study: one event, fanned out to both (a redelivery of it, after an answer lost on a slow
    # machine, is the same event at a later attempt: CI once saw one study's event twice, whose ids went unrecorded).
    first = subs[0].events_by_study()
    assert sorted(first) == sorted(remaining)
    assert {study: ids for study, ids in first.items() if len(ids) != 1} == {}
    for receiver in subs:
        assert receiver.events_by_study() == first
        assert receiver.repeated_attempts() == []
    for uid in remaining:
        body = of_study(subs[0], uid)[0]
        held = [i for i in simulator.instances.values() if i.study == uid]
        assert body["NumberOfStudyRelatedInstances"] == len(held)
        assert body["PatientID"] == held[0].patient_id
        assert body["ModalitiesInStudy"] == sorted({i.modality for i in held})
        assert body["SourceID"] == "azure-changefeed"


@pytest.mark.parametrize(("profile", "detection", "feed"), [
    ("orthanc", "auto", "orthanc-changes"), ("azure", "auto", "azure-changefeed"), ("standard", "auto", "none"),
    ("azure", "azure-changefeed", "azure-changefeed"), ("orthanc", "none", "none"),
])
def test_each_pacs_gets_its_feed(profile: str, detection: str, feed: str) -> None:
    assert make_settings(pacs_profile=profile, new_exam_detection=detection).new_exam_feed == feed


@pytest.mark.parametrize(("profile", "detection"), [("orthanc", "azure-changefeed"), ("azure", "orthanc-changes")])
def test_a_feed_of_another_pacs_is_refused_at_start(profile: str, detection: str) -> None:
    with pytest.raises(SettingsError, match="needs PACS_PROFILE"):
        make_settings(pacs_profile=profile, new_exam_detection=detection)


@pytest.mark.parametrize("version", [1, 2])
async def test_throttled_reads_neither_skip_entries_nor_forget_studies(simulator: AzureDicomSimulator,
                                                                      version: int, tmp_path: Any) -> None:
    """A 429 or 503 on any read is retried at the next poll: not an empty page (under v1 the window would be
    stepped over), not a study gone (it would be forgotten), not an empty list of series (a study of nothing)."""
    database_url = f"sqlite:///{tmp_path / 'events.db'}"
    with receivers(Receiver()) as subs:
        gw = Gateway(database_url, subs, settings(simulator, version))
        await gw.start()
        try:
            simulator.fail("/changefeed", 3, 429)
            if version == 1:  # only v1 asks for the latest entry after its start (to step over gaps)
                simulator.fail("/changefeed/latest", 2, 503)
            simulator.fail("/studies", 2, 429)
            simulator.fail("/series", 2, 503)
            for n in range(3):
                simulator.store("1.9.1", "1.9.1.1", f"1.9.1.1.{n}", patient_id="THROTTLED", modality="MR")
            simulator.skip(150)  # a gap wider than a v1 page, read through the faults
            simulator.store("1.9.2", "1.9.2.1", "1.9.2.1.1", patient_id="THROTTLED-2")
            await wait_until(lambda: {a["StudyInstanceUID"] for a in announcements(subs)} >= {"1.9.1", "1.9.2"},
                             timeout=30)
            await asyncio.sleep(0.5)
        finally:
            await gw.stop()
    assert not any(simulator.faults.values())  # every fault was met
    assert sorted(a["StudyInstanceUID"] for a in announcements(subs)) == ["1.9.1", "1.9.2"]
    [first] = of_study(subs[0], "1.9.1")
    assert first["NumberOfStudyRelatedInstances"] == 3
    assert first["NumberOfStudyRelatedSeries"] == 1
