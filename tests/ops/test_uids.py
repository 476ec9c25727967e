"""`GET /uid` and UID roots (acceptance 6 of issue 2)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.dicom.uid import MIN_RANDOM_DIGITS, UID_MAX_LENGTH, UidGenerator, UidRootError, is_valid_uid
from tests.conftest import AppClient, gateway_env
from tests.support.processes import CONSOLE_SCRIPT, GatewayProcess


async def fetch_uids(base_url: str, count: int, concurrency: int = 20) -> list[str]:
    uids: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                response = await client.get("/uid")
                assert response.status_code == 200
                uids.append(response.json()["uid"])

        assert count % concurrency == 0
        await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
    return uids


async def test_ten_thousand_uids_from_two_gateway_processes_are_distinct_and_valid(tmp_path: Path) -> None:
    root = "1.2.826.0.1.3680043.10.1234"
    env = gateway_env(pacs_service_url="http://127.0.0.1:9/dicom-web", auth_mode="none", dicom_uid_root=root,
                      log_level="warning")
    with GatewayProcess(env, tmp_path / "a.log") as first, GatewayProcess(env, tmp_path / "b.log") as second:
        batches = await asyncio.gather(fetch_uids(first.url, 5000), fetch_uids(second.url, 5000))
    uids = batches[0] + batches[1]
    assert len(uids) == 10_000
    assert len(set(uids)) == 10_000
    for uid in uids:
        assert is_valid_uid(uid), uid
        assert len(uid) <= UID_MAX_LENGTH
        assert uid.startswith(root + ".")


async def test_uid_response_is_not_cacheable(app_client: AppClient) -> None:
    async with app_client() as client:
        response = await client.get("/uid")
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["uid"].startswith("2.25.")


@pytest.mark.parametrize(
    "root",
    [
        "2.25",
        "1",
        "1.2.3",
        "1.2.826.0.1.3680043.10.1234",
        "1.2.840.113619.2.55.3.604688119.969.123",  # 39 characters: the longest that leaves 24 digits
    ],
)
def test_roots_that_leave_room_yield_valid_uids(root: str) -> None:
    generator = UidGenerator(root)
    uids = {generator.new() for _ in range(2000)}
    assert len(uids) == 2000
    for uid in uids:
        assert is_valid_uid(uid), uid
        assert uid.startswith(root + ".")
        suffix = uid.removeprefix(root + ".")
        assert not suffix.startswith("0")
        if root != "2.25":
            assert len(uid) == UID_MAX_LENGTH  # every digit of room is used for randomness


def test_uuid_root_follows_ps3_5_b2() -> None:
    uid = UidGenerator("2.25").new()
    assert int(uid.removeprefix("2.25.")) < 2**128
    assert len(uid) <= 44


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("1.2.840.113619.2.55.3.604688119.969.1234", "at least 24 are needed"),  # 40 characters
        ("1.2.3." + "9" * 60, "at least 24 are needed"),
        ("1.02.3", "not a valid UID root"),
        ("1..2", "not a valid UID root"),
        ("1.2.", "not a valid UID root"),
        ("1.2.a", "not a valid UID root"),
        ("", "empty"),
    ],
)
def test_roots_that_cannot_yield_valid_uids_are_refused(root: str, message: str) -> None:
    with pytest.raises(UidRootError, match=message):
        UidGenerator(root)


def test_longest_root_is_documented_by_the_constant() -> None:
    assert UID_MAX_LENGTH - 1 - MIN_RANDOM_DIGITS == 39


def test_gateway_refuses_to_start_with_a_bad_root(tmp_path: Path) -> None:
    env = gateway_env(pacs_service_url="http://127.0.0.1:9/dicom-web", auth_mode="none",
                      dicom_uid_root="1.2.840.113619.2.55.3.604688119.969.1234")
    result = subprocess.run([str(CONSOLE_SCRIPT), "serve", "--port", "1"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "DICOM_UID_ROOT:" in result.stderr
    assert "use a root of at most 39 characters" in result.stderr
