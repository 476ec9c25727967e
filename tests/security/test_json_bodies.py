"""JSON bodies (issue 10, class 3): what `read_json` accepts is what the gateway can store and serve back.

Non-finite numbers, nesting deeper than the limit, strings that are not Unicode text (lone surrogates) or that
PostgreSQL cannot store (NUL) are refused with 400 before anything is stored or sent upstream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.conftest import make_settings, running
from tests.support.exams_support import SECRET, clinician, token
from tests.support.exams_support import error as error_body
from tests.worklist.test_workitems import seed, stack

SEED: dict[str, Any] = {
    "SourceID": "PACS-1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.5", "EventType": "COMPLETED",
    "PatientID": "SDJ38WMD1MS01", "PatientName": "MARIO^ROSSI",
}
PACS = {"Authorization": f"Bearer {token('pacs')}", "Content-Type": "application/json"}
MAX_DEPTH = 32  # gateway.edge.bodies.MAX_JSON_DEPTH, as documented


@asynccontextmanager
async def gateway(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(auth_mode="jwt", auth_jwt_secret=SECRET, database_url=database_url)
    async with running(create_app(settings)) as client:
        yield client


def with_extra(raw_value: str) -> bytes:
    """The seed event with one unknown field (kept as sent) whose JSON text is `raw_value`."""
    return json.dumps(SEED)[:-1].encode() + b', "Extra": ' + raw_value.encode() + b"}"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def stored_events(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    listing = await client.get("/new-exam-callback/events", headers=clinician())
    assert listing.status_code == 200, listing.text  # the listing keeps working after a refused body
    events: list[dict[str, Any]] = listing.json()
    return events


def assert_bad_request(answer: httpx.Response) -> dict[str, Any]:
    return error_body(answer, 400, "bad_request")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
async def test_callback_with_a_non_finite_number_is_400_and_nothing_stored(tmp_path: Path, number: str) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}") as client:
        error = assert_bad_request(await client.post("/new-exam-callback", content=with_extra(number), headers=PACS))
        assert error["details"]["fields"] == [{"field": "Extra", "message": "not a finite number"}]
        assert await stored_events(client) == []


async def test_callback_with_a_non_finite_number_deep_inside_names_its_place(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}") as client:
        body = with_extra('{"readings": [1.5, 2, NaN]}')
        error = assert_bad_request(await client.post("/new-exam-callback", content=body, headers=PACS))
        assert error["details"]["fields"] == [{"field": "Extra.readings.2", "message": "not a finite number"}]
        assert await stored_events(client) == []


@pytest.mark.parametrize("depth", [MAX_DEPTH, 100, 30_000])  # 30 000 levels: 60 KB, under the 64 KiB size cap
async def test_callback_nested_deeper_than_the_limit_is_400_and_nothing_stored(tmp_path: Path, depth: int) -> None:
    # The body itself is one level: its Extra field reaches depth + 1.
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}") as client:
        error = assert_bad_request(await client.post("/new-exam-callback", content=with_extra(nested(depth)),
                                                     headers=PACS))
        assert error["details"]["max_depth"] == MAX_DEPTH
        assert await stored_events(client) == []


async def test_callback_nested_up_to_the_limit_is_stored_and_served_back(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}") as client:
        answer = await client.post("/new-exam-callback", content=with_extra(nested(MAX_DEPTH - 1)), headers=PACS)
        assert answer.status_code == 204, answer.text
        [stored] = await stored_events(client)
        assert stored["event"]["Extra"] == json.loads(nested(MAX_DEPTH - 1))


@pytest.mark.parametrize("text", [r'"\ud800"', r'"abc\udfff"', r'{"\ud83d": 1}'])
async def test_callback_with_a_lone_surrogate_is_400_and_nothing_stored(tmp_path: Path, text: str) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}") as client:
        error = assert_bad_request(await client.post("/new-exam-callback", content=with_extra(text), headers=PACS))
        assert error["details"]["fields"][0]["message"] == "not Unicode text (a lone surrogate)"
        assert await stored_events(client) == []


async def test_callback_with_nul_in_a_string_is_400_and_nothing_stored_on_either_database(database_url: str) -> None:
    async with gateway(database_url) as client:
        for text in (r'"a\u0000b"', r'{"k\u0000": 1}'):
            error = assert_bad_request(await client.post("/new-exam-callback", content=with_extra(text),
                                                         headers=PACS))
            assert error["details"]["fields"][0]["message"] == "holds a NUL character"
        assert await stored_events(client) == []


async def test_any_accepted_event_is_served_back_as_sent_on_either_database(database_url: str) -> None:
    extra = {"emoji": "🩻 Röntgen", "big": 10**300, "tiny": 5e-324, "max": 1.7976931348623157e308,
             "escapes": "tab\there \"quoted\" \\ back", "controls": "\u0001\u001f", "empty": {}, "list": [[], {}],
             "unicode_key_ü": None, "bidi": "\u202e"}
    async with gateway(database_url) as client:
        answer = await client.post("/new-exam-callback", content=json.dumps({**SEED, **extra}), headers=PACS)
        assert answer.status_code == 204, answer.text
        [stored] = await stored_events(client)
        assert stored["event"] == {**SEED, **extra}
        one = await client.get(f"/new-exam-callback/events/{answer.headers['x-event-id']}", headers=clinician())
        assert one.status_code == 200
        assert one.json()["event"] == {**SEED, **extra}


@pytest.mark.parametrize("raw", ["NaN", "1e400", nested(100_000), r'"\ud800"'])
async def test_workitem_body_that_cannot_be_read_back_is_400_and_nothing_reaches_the_upstream(raw: str) -> None:
    body = json.dumps(seed("standard"))[:-1].encode() + b', "PatientName": ' + raw.encode() + b"}"
    async with stack("standard") as s:
        answer = await s.client.post("/workitems", content=body,
                                     headers={"Content-Type": "application/json", **clinician()})
        assert_bad_request(answer)
        assert s.ups.requests == []
