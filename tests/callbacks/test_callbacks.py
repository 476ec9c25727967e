"""`/new-exam-callback`: stored events fanned out to real HTTP receivers on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.app import create_app
from gateway.store.db import create_engine
from tests.conftest import gateway_env, make_settings, running
from tests.support.dicom_factory import generated, new_uid
from tests.support.exams_support import SECRET, clinician, token
from tests.support.processes import GatewayProcess
from tests.support.receivers import Receiver, receivers, verify, wait_until

SEED: dict[str, Any] = {
    "SourceID": "PACS-1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.5", "AccessionNumber": "NDS83JF784N209D2",
    "PatientID": "SDJ38WMD1MS01", "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 120,
    "ModalitiesInStudy": ["CT"], "AeTitles": ["CT01"], "StationNames": ["CT ROOM 1"], "EventType": "COMPLETED",
    "StudyDate": "20000101", "StudyTime": "120000", "StudyID": None, "ReferringPhysicianName": "NERI^PAOLO",
    "StudyDescription": "Tac", "PatientName": "MARIO^ROSSI", "PatientBirthDate": "19700101", "PatientSex": "M",
}
FAST = {  # short timings so that retries and leases play out in seconds
    "callback_timeout_s": "0.5", "callback_backoff_base_s": "0.1", "callback_max_backoff_s": "0.4",
    "callback_poll_s": "0.05", "callback_lease_s": "2",
}


def pacs() -> dict[str, str]:
    return {"Authorization": f"Bearer {token('pacs')}"}


def event(n: int = 0, **changes: Any) -> dict[str, Any]:
    return {**SEED, "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1234.{1000 + n}", **changes}


@asynccontextmanager
async def gateway(database_url: str, subscribers: list[Receiver], **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    values: dict[str, Any] = {
        "auth_mode": "jwt", "auth_jwt_secret": SECRET, "database_url": database_url,
        "callback_urls": ",".join(r.url for r in subscribers), **FAST, **settings,
    }
    async with running(create_app(make_settings(**values))) as client:
        yield client


async def post(client: httpx.AsyncClient, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return await client.post("/new-exam-callback", content=json.dumps(body),
                             headers={"Content-Type": "application/json", **(pacs() if headers is None else headers)})


async def test_the_seed_event_is_stored_and_delivered_to_three_receivers(database_url: str) -> None:
    with receivers(Receiver(), Receiver(), Receiver()) as subs:
        async with gateway(database_url, subs) as client:
            answer = await post(client, SEED)
            assert answer.status_code == 204, answer.text
            event_id = answer.headers["x-event-id"]
            await wait_until(lambda: all(r.of(event_id) for r in subs))
            for r in subs:
                [delivery] = r.of(event_id)
                assert json.loads(delivery.body) == SEED  # as sent, StudyID null included
                assert delivery.attempt == 1
            stored = await client.get(f"/new-exam-callback/events/{event_id}", headers=clinician())
            assert stored.status_code == 200
            assert stored.json()["event"] == SEED

            async def states() -> list[str]:
                listed = await client.get("/new-exam-callback/events", headers=clinician(),
                                          params={"StudyInstanceUID": SEED["StudyInstanceUID"]})
                [item] = listed.json()
                return [d["state"] for d in item["deliveries"]]

            deadline = time.monotonic() + 10
            while await states() != ["delivered"] * 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)


async def test_the_same_event_twice_is_stored_once(database_url: str) -> None:
    with receivers(Receiver()) as subs:
        async with gateway(database_url, subs) as client:
            first = await post(client, SEED)
            again = await post(client, dict(reversed(list(SEED.items()))))  # same body, other key order
            assert first.status_code == again.status_code == 204
            assert first.headers["x-event-id"] == again.headers["x-event-id"]
            other = await post(client, {**SEED, "NumberOfStudyRelatedInstances": 121})
            assert other.headers["x-event-id"] != first.headers["x-event-id"]
            await wait_until(lambda: len(subs[0].per_event()) == 2)
            await asyncio.sleep(0.3)
            assert sum(subs[0].per_event().values()) == 2


async def test_retries_back_off_and_a_dead_receiver_does_not_hold_up_the_others(database_url: str) -> None:
    flaky, dead, fine = Receiver(fail_first=5), Receiver(hang_s=5), Receiver()
    with receivers(flaky, dead, fine) as subs:
        # A long lease: a retry that waited for the lease to run out would show as a gap of 10 s.
        async with gateway(database_url, subs, callback_max_attempts="8", callback_lease_s="10") as client:
            started = time.monotonic()
            events = [(await post(client, event(n))).headers["x-event-id"] for n in range(5)]
            await wait_until(lambda: all(fine.of(e) for e in events), timeout=10)
            assert time.monotonic() - started < 2  # on time, while the dead one eats its timeouts
            await wait_until(lambda: all(len(flaky.of(e)) == 6 for e in events), timeout=20)
            for e in events:
                attempts = flaky.of(e)
                assert [d.attempt for d in attempts] == [1, 2, 3, 4, 5, 6]
                gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
                # Backoff: between half and all of min(0.4, 0.1 * 2^(n-1)). Never early, however loaded the
                # machine; late by at most 2 s (a loaded CI runner stalled one retry by 0.9 s). The cap and the
                # jitter's spread are measured exactly on DeliveryPolicy in test_pure_modules.
                for n, gap in enumerate(gaps, start=1):
                    ceiling = min(0.4, 0.1 * 2 ** (n - 1))
                    assert ceiling / 2 - 0.05 <= gap <= ceiling + 2.0, (n, gap)

            def dead_failed() -> bool:
                return all(len(dead.of(e)) == 8 for e in events)

            await wait_until(dead_failed, timeout=40)
            await asyncio.sleep(1.2)  # the last attempt times out (0.5 s) and is recorded
            for e in events:
                body = (await client.get(f"/new-exam-callback/events/{e}", headers=clinician())).json()
                states = {d["subscriber"]: d for d in body["deliveries"]}
                assert states[dead.url]["state"] == "failed"
                assert states[dead.url]["attempts"] == 8
                assert "no answer within" in states[dead.url]["lastError"]
                assert states[flaky.url]["state"] == "delivered"
                assert states[flaky.url]["attempts"] == 6
                assert states[fine.url]["state"] == "delivered"
            assert len(dead.of(events[0])) == 8  # no attempt after the last one


async def test_signatures_verify_and_retries_keep_the_event_id(tmp_path: Path) -> None:
    secret = "whsec-0123456789abcdef"
    flaky = Receiver(fail_first=2)
    with receivers(flaky) as subs:
        async with gateway(f"sqlite:///{tmp_path / 'e.db'}", subs, callback_signing_secret=secret) as client:
            event_id = (await post(client, SEED)).headers["x-event-id"]
            await wait_until(lambda: len(flaky.of(event_id)) == 3)
    deliveries = flaky.of(event_id)
    assert {d.event_id for d in deliveries} == {event_id}
    for d in deliveries:
        assert d.signature is not None
        assert verify(d.signature, d.body, secret.encode())
        assert not verify(d.signature, d.body + b" ", secret.encode())  # any change to the body breaks it
        assert not verify(d.signature, d.body, b"another secret")


async def test_redeliver_sends_again(tmp_path: Path) -> None:
    with receivers(Receiver()) as subs:
        async with gateway(f"sqlite:///{tmp_path / 'e.db'}", subs) as client:
            event_id = (await post(client, SEED)).headers["x-event-id"]
            await wait_until(lambda: len(subs[0].of(event_id)) == 1)
            again = await client.post(f"/new-exam-callback/events/{event_id}/redeliver", headers=clinician())
            assert again.status_code == 202
            await wait_until(lambda: len(subs[0].of(event_id)) == 2)
            missing = await client.post("/new-exam-callback/events/999999/redeliver", headers=clinician())
            assert missing.status_code == 404
            assert (await client.get("/new-exam-callback/events/abc", headers=clinician())).status_code == 404


async def test_the_events_list_filters_and_orders(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        for n in range(3):
            assert (await post(client, event(n, PatientID=f"P{n % 2}"))).status_code == 204
        newest_first = (await client.get("/new-exam-callback/events", headers=clinician())).json()
        assert [e["event"]["StudyInstanceUID"][-4:] for e in newest_first] == ["1002", "1001", "1000"]
        p0 = (await client.get("/new-exam-callback/events", headers=clinician(), params={"PatientID": "P0"})).json()
        assert len(p0) == 2
        later = (await client.get("/new-exam-callback/events", headers=clinician(),
                                  params={"since": "2999-01-01T00:00:00Z"})).json()
        assert later == []
        page = (await client.get("/new-exam-callback/events", headers=clinician(),
                                 params={"limit": "1", "offset": "1"})).json()
        assert [e["event"]["StudyInstanceUID"][-4:] for e in page] == ["1001"]
        for bad in ({"since": "yesterday"}, {"limit": "0"}, {"StudyInstanceUID": "x"}, {"colour": "blue"}):
            answer = await client.get("/new-exam-callback/events", headers=clinician(), params=bad)
            assert answer.status_code == 400, bad
        assert (await client.get("/new-exam-callback/events", headers=pacs())).status_code == 403


@pytest.mark.parametrize(("change", "field"), [
    ({"StudyInstanceUID": None}, "StudyInstanceUID"),
    ({"StudyInstanceUID": "1.02.3"}, "StudyInstanceUID"),
    ({"SourceID": ""}, "SourceID"),
    ({"EventType": 5}, "EventType"),
    ({"NumberOfStudyRelatedSeries": -1}, "NumberOfStudyRelatedSeries"),
    ({"NumberOfStudyRelatedInstances": "12O"}, "NumberOfStudyRelatedInstances"),
    ({"NumberOfStudyRelatedInstances": 1.5}, "NumberOfStudyRelatedInstances"),
    ({"NumberOfStudyRelatedSeries": True}, "NumberOfStudyRelatedSeries"),
    ({"ModalitiesInStudy": 7}, "ModalitiesInStudy"),
    ({"AeTitles": [1]}, "AeTitles.0"),
    ({"StationNames": {"a": 1}}, "StationNames"),
    ({"StudyDate": "20000230"}, "StudyDate"),
    ({"StudyDate": "2000-01-01"}, "StudyDate"),
    ({"PatientBirthDate": "1970"}, "PatientBirthDate"),
    ({"StudyTime": "25:00"}, "StudyTime"),
    ({"PatientID": "x" * 65}, "PatientID"),
    ({"StudyID": 7}, "StudyID"),
    ({"PatientName": ["A"]}, "PatientName"),
    ({"ReferringPhysicianName": 1}, "ReferringPhysicianName"),
    ({"StudyDescription": False}, "StudyDescription"),
    ({"PatientSex": 1}, "PatientSex"),
    ({"AccessionNumber": 12}, "AccessionNumber"),
])
async def test_an_invalid_field_is_400_and_nothing_is_stored(tmp_path: Path, change: dict[str, Any],
                                                             field: str) -> None:
    body = {key: value for key, value in {**SEED, **change}.items() if not (key in change and value is None)}
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await post(client, body)
        assert answer.status_code == 400, answer.text
        assert field in [p["field"] for p in answer.json()["error"]["details"]["fields"]]
        assert (await client.get("/new-exam-callback/events", headers=clinician())).json() == []


async def test_bodies_and_callers_that_are_refused(tmp_path: Path) -> None:
    fixed = "fixed-callback-token-0123456789"
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", [], callback_auth_token=fixed) as client:
        cases = [
            (b"{not json", "application/json", pacs(), 400),
            (b"[1, 2]", "application/json", pacs(), 400),
            (b"{" + b" " * (10 * 1024 * 1024) + b"}", "application/json", pacs(), 413),
            (json.dumps(SEED).encode(), "application/xml", pacs(), 415),
            (json.dumps(SEED).encode(), "application/json", {}, 401),
            (json.dumps(SEED).encode(), "application/json", {"Authorization": "Bearer wrong-token"}, 401),
            (json.dumps(SEED).encode(), "application/json", {"X-Callback-Token": "wrong-token"}, 401),
            (json.dumps(SEED).encode(), "application/json", clinician(), 403),
        ]
        for content, content_type, headers, status in cases:
            answer = await client.post("/new-exam-callback", content=content,
                                       headers={"Content-Type": content_type, **headers})
            assert answer.status_code == status, (status, answer.text)
            assert set(answer.json()["error"]) == {"code", "message", "details"}
        assert (await client.get("/new-exam-callback/events", headers=clinician())).json() == []
        for headers in ({"Authorization": f"Bearer {fixed}"}, {"X-Callback-Token": fixed}):
            answer = await post(client, event(len(headers["Authorization" if "Authorization" in headers
                                                           else "X-Callback-Token"])), headers)
            assert answer.status_code == 204, answer.text
        assert len((await client.get("/new-exam-callback/events", headers=clinician())).json()) == 2


# --- processes: crashes and replicas -----------------------------------------------------------------------------


def serve_env(database_url: str, subs: list[Receiver], **settings: str) -> dict[str, str]:
    return gateway_env(auth_mode="jwt", auth_jwt_secret=SECRET, pacs_service_url="http://127.0.0.1:9/dicom-web",
                       database_url=database_url, callback_urls=",".join(r.url for r in subs),
                       **{"log_level": "warning", **FAST, **settings})


def post_many(url: str, first: int, count: int) -> list[str]:
    ids = []
    with httpx.Client(timeout=30) as client:
        for n in range(first, first + count):
            answer = client.post(f"{url}/new-exam-callback", json=event(n), headers=pacs())
            assert answer.status_code == 204, answer.text
            ids.append(answer.headers["x-event-id"])
    return ids


async def test_kill_9_loses_nothing(database_url: str, tmp_path: Path) -> None:
    slow = Receiver(hang_s=0.2)  # deliveries are in flight when the gateway dies
    with receivers(Receiver(), slow, Receiver(fail_first=1)) as subs:
        env = serve_env(database_url, subs, callback_concurrency="4")
        process = GatewayProcess(env, tmp_path / "gw.log")
        process.start()
        ids = await asyncio.to_thread(post_many, process.url, 0, 200)
        process.kill()
        at_kill = [len(r.per_event()) for r in subs]
        assert min(at_kill) < 200  # some were still pending or in flight
        process = GatewayProcess(env, tmp_path / "gw.log")
        process.start()
        try:
            await wait_until(lambda: all(set(r.per_event()) >= set(ids) for r in subs), timeout=90)
        finally:
            process.stop()
    for r in subs:
        counts = r.per_event()
        assert all(counts[i] >= 1 for i in ids)  # every event reached every receiver: none lost
    print(f"events reached per receiver at the kill: {at_kill}; after the restart: "  # shown with -s
          f"{[len(r.per_event()) for r in subs]}; events accepted more than once (at-least-once duplicates): "
          f"{[sum(max(0, n - r.fail_first - 1) for n in r.per_event().values()) for r in subs]}")


async def test_two_replicas_on_postgresql_share_the_work(postgres_url: str, tmp_path: Path) -> None:
    counter = Receiver()
    with receivers(counter) as subs:
        env = serve_env(postgres_url, subs, callback_concurrency="8")
        first = GatewayProcess(env, tmp_path / "a.log")
        second = GatewayProcess(env, tmp_path / "b.log")
        first.start()
        second.start()
        try:
            ids_a, ids_b = await asyncio.gather(asyncio.to_thread(post_many, first.url, 0, 250),
                                                asyncio.to_thread(post_many, second.url, 250, 250))
            ids = set(ids_a) | set(ids_b)
            assert len(ids) == 500
            await wait_until(lambda: set(counter.per_event()) >= ids, timeout=90)
        finally:
            first.stop()
            second.stop()
    counts = counter.per_event()
    duplicates = sum(n - 1 for n in counts.values())
    print(f"500 events, {sum(counts.values())} deliveries, {duplicates} duplicates")  # shown with -s; counted below
    assert duplicates == 0


async def test_sigterm_finishes_or_releases_what_is_in_flight(tmp_path: Path) -> None:
    slow = Receiver(hang_s=0.3)
    database = tmp_path / "e.db"
    with receivers(slow) as subs:
        env = serve_env(f"sqlite:///{database}", subs, callback_concurrency="4", callback_lease_s="600",
                        log_level="info")
        process = GatewayProcess(env, tmp_path / "gw.log")
        process.start()
        ids = await asyncio.to_thread(post_many, process.url, 0, 40)
        await wait_until(lambda: len(slow.deliveries) >= 4)
        process.stop()  # SIGTERM (uvicorn shuts down, then re-raises the signal: the exit status is -15)
        assert "gateway_stopped" in process.log()  # the lifespan ran to its end
        assert len(slow.per_event()) < 40
        engine = create_engine(f"sqlite:///{database}")
        try:
            async with engine.connect() as conn:
                leased = (await conn.execute(text("SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL"))
                          ).scalar()
        finally:
            await engine.dispose()
        assert leased == 0  # nothing left leased for 600 s: the next start sends the rest at once
        process = GatewayProcess(env, tmp_path / "gw.log")
        process.start()
        try:
            await wait_until(lambda: set(slow.per_event()) >= set(ids), timeout=30)
        finally:
            process.stop()


# --- new-exam detection from Orthanc's change feed ---------------------------------------------------------------


def stow_direct(dicomweb_url: str, files: list[bytes]) -> None:
    """Store files straight into Orthanc (STOW-RS), not through the gateway."""
    boundary = "direct-upload"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in files) + f"--{boundary}--\r\n".encode()
    answer = httpx.post(f"{dicomweb_url}/studies", content=body, timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert answer.status_code == 200, answer.text


def of_study(receiver: Receiver, study_uid: str) -> list[dict[str, Any]]:
    return [json.loads(d.body) for d in list(receiver.deliveries)
            if json.loads(d.body).get("StudyInstanceUID") == study_uid]


async def test_orthanc_changes_announce_each_new_study_once_across_a_restart(
    database_url: str, orthanc_url: str
) -> None:
    settings = {"pacs_service_url": orthanc_url, "pacs_profile": "orthanc", "new_exam_detection": "orthanc-changes",
                "new_exam_poll_s": "0.1"}
    with receivers(Receiver(), Receiver(), Receiver()) as subs:
        async with gateway(database_url, subs, **settings):
            await asyncio.sleep(0.5)  # the follower has taken its starting position
        # While the gateway is down, a study arrives and becomes stable (Orthanc's StableAge is 2 s here).
        study, series = new_uid(), new_uid()
        files = [generated("FEED-1", study_uid=study, series_uid=series, modality="MR").data for _ in range(3)]
        await asyncio.to_thread(stow_direct, orthanc_url, files)
        await asyncio.sleep(3.5)
        async with gateway(database_url, subs, **settings):
            await wait_until(lambda: all(of_study(r, study) for r in subs), timeout=20)
        # A second study while it runs; then a restart must not announce either again.
        other = new_uid()
        async with gateway(database_url, subs, **settings):
            await asyncio.to_thread(stow_direct, orthanc_url, [generated("FEED-2", study_uid=other).data])
            await wait_until(lambda: all(of_study(r, other) for r in subs), timeout=20)
        async with gateway(database_url, subs, **settings):
            await asyncio.sleep(1.0)
    for r in subs:
        [announced] = of_study(r, study)
        assert len(of_study(r, other)) == 1
        assert announced["EventType"] == "COMPLETED"
        assert announced["PatientID"] == "FEED-1"
        assert announced["NumberOfStudyRelatedSeries"] == 1
        assert announced["NumberOfStudyRelatedInstances"] == 3
        assert announced["ModalitiesInStudy"] == ["MR"]
        assert announced["SourceID"] == "orthanc-changes"
