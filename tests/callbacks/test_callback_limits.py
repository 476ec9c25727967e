"""`POST /new-exam-callback` limits: names that receivers could take for one another, and the size of what is kept,
so that the events listing stays within a bounded amount of memory however many events it is asked for."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from gateway.app import create_app
from gateway.callbacks.routes import parse_event
from gateway.store.db import create_engine
from gateway.store.events import EventStore
from tests.callbacks.test_callbacks import SEED, event, gateway, pacs
from tests.conftest import make_settings
from tests.support.exams_support import SECRET, clinician
from tests.support.exams_support import error as error_body

MAX_BODY_BYTES = 64 * 1024  # gateway.callbacks.routes.MAX_BODY_BYTES, as documented
MAX_VALUES = 4096  # gateway.callbacks.routes.MAX_BODY_VALUES, as documented
LISTING_PEAK_BYTES = 32 * 1024 * 1024  # the documented bound on a listing's memory (docs/api/callbacks.md, Sizes)
MAX_LIMIT = 1000  # the largest `limit` of GET /new-exam-callback/events
POSTED = 20  # of the MAX_LIMIT events of the listing test, those stored through POST /new-exam-callback
LIST_BATCH = 50  # gateway.callbacks.routes.LIST_BATCH: events read at a time by a listing

JSON = {"Content-Type": "application/json"}


def values(value: Any) -> int:
    """How many JSON values `value` is: itself and everything it holds."""
    if isinstance(value, dict):
        return 1 + sum(values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(values(v) for v in value)
    return 1


def at_the_caps(n: int, *, count: int = MAX_VALUES, size: int = MAX_BODY_BYTES) -> bytes:
    """Event `n` as a body of `size` bytes holding `count` JSON values, shaped to cost the most once read back:
    chains of one-name objects (the most Python memory per byte of JSON text) and a string of backslashes (which
    doubles again when `rawBody` escapes it)."""
    fields = event(n)
    chains: list[Any] = []
    left = count - values(fields) - 2  # the list of chains and the padding string
    while left > 0:
        depth = min(left, 24)  # below the depth limit (32) with the body, Extra and the list
        chain: dict[str, Any] = {}
        for _ in range(depth - 1):
            chain = {"a": chain}
        chains.append(chain)
        left -= depth
    body = {**fields, "Extra": chains, "Pad": ""}
    assert values(body) == count
    text = json.dumps(body, separators=(",", ":")).encode()
    room = size - len(text)
    assert room >= 0, "the values do not fit in the size"
    padded = text[:-2] + b"\\\\" * (room // 2) + b'"}'  # text ends with `"Pad":""}`: the padding goes between
    padded = b" " * (room % 2) + padded  # an odd byte: JSON allows white space before the value
    assert len(padded) == size
    assert values(json.loads(padded)) == count
    return padded


async def post(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post("/new-exam-callback", content=content, headers={**JSON, **pacs()})


def assert_bad_request(answer: httpx.Response) -> dict[str, Any]:
    return error_body(answer, 400, "bad_request")


async def nothing_stored(client: httpx.AsyncClient) -> bool:
    listing = await client.get("/new-exam-callback/events", headers=clinician())
    assert listing.status_code == 200, listing.text
    found: list[Any] = listing.json()
    return found == []


# --- names that differ only in case ------------------------------------------------------------------------------


def with_tail(tail: str) -> bytes:
    return json.dumps(SEED)[:-1].encode() + b", " + tail.encode() + b"}"


@pytest.mark.parametrize(("raw", "field", "first"), [
    # The reviewer's case: the gateway indexes SDJ38WMD1MS01; a subscriber whose decoder matches names regardless
    # of case, the last one winning (Go's encoding/json), reads OTHER from the same signed bytes.
    (with_tail('"patientID": "OTHER"'), "patientID", "PatientID"),
    (with_tail('"PATIENTID": "OTHER"'), "PATIENTID", "PatientID"),
    (b'{"patientID": "OTHER", ' + json.dumps(SEED)[1:].encode(), "PatientID", "patientID"),
    (with_tail('"Extra": {"Kind": 1, "kind": 2}'), "kind", "Kind"),  # every object, not only the event's fields
    (with_tail('"Extra": [{"a": 1}, {"b": 1, "B": 2}]'), "B", "b"),
    (with_tail('"Extra": {"k": 1, "\\u212a": 2}'), "\u212a", "k"),  # KELVIN SIGN folds to k (also in Go)
])
async def test_names_equal_but_for_case_in_one_object_are_400_naming_the_later_one(
    tmp_path: Path, raw: bytes, field: str, first: str
) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        error = assert_bad_request(await post(client, raw))
        [problem] = error["details"]["fields"]
        assert problem["field"] == field
        assert first in problem["message"]
        assert await nothing_stored(client)


async def test_a_field_of_the_event_in_another_case_alone_is_400_not_an_unknown_field(tmp_path: Path) -> None:
    # Kept as an unknown field, "patientID" would leave the event indexed under no patient while a decoder that
    # ignores case reads it as PatientID.
    body = {key: value for key, value in SEED.items() if key != "PatientID"}
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        for name in ("patientID", "PATIENTID", "patientid"):
            error = assert_bad_request(await post(client, json.dumps({**body, name: "OTHER"}).encode()))
            assert error["details"]["fields"] == [
                {"field": name, "message": "is PatientID in another case: send it as PatientID"}]
        assert await nothing_stored(client)
        answer = await post(client, json.dumps({**body, "PatientIDs": ["OTHER"], "patient": "x"}).encode())
        assert answer.status_code == 204, answer.text  # other unknown names are kept as sent


async def test_names_that_differ_otherwise_are_distinct(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await post(client, with_tail('"Extra": {"Kind": 1, "Kind2": 2, "K ind": 3}, "Other": {"kind": 4}'))
        assert answer.status_code == 204, answer.text  # the same name in two objects is not a repeat


# --- sizes -------------------------------------------------------------------------------------------------------


async def test_a_body_at_the_caps_is_stored_and_one_byte_more_is_413_with_the_json_error(tmp_path: Path) -> None:
    body = at_the_caps(0)
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        larger = b" " + body
        for content in (larger, chunks(larger)):  # with a Content-Length, and chunked without one
            answer = await client.post("/new-exam-callback", content=content, headers={**JSON, **pacs()})
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"] == {
                "code": "payload_too_large", "message": "the event is larger than the gateway accepts",
                "details": {"limit_bytes": MAX_BODY_BYTES}}
        assert await nothing_stored(client)
        answer = await post(client, body)
        assert answer.status_code == 204, answer.text
        found = (await client.get(f"/new-exam-callback/events/{answer.headers['x-event-id']}",
                                  headers=clinician())).json()
        assert found["rawBody"].encode() == body


async def chunks(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), 4096):
        yield content[start:start + 4096]


async def test_a_body_with_one_value_more_than_the_cap_is_400(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        for count in (MAX_VALUES + 1, 2 * MAX_VALUES):
            error = assert_bad_request(await post(client, at_the_caps(0, count=count)))
            assert error["message"] == f"the body holds more than {MAX_VALUES} JSON values"
            assert error["details"] == {"fields": [], "max_values": MAX_VALUES}
        flat = b"[" + b"0," * (MAX_VALUES - 1) + b"0]"  # the cap counts values, not containers: 4097 with the list
        error = assert_bad_request(await post(client, with_tail(f'"Extra": {flat.decode()}')))
        assert error["details"] == {"fields": [], "max_values": MAX_VALUES}
        assert await nothing_stored(client)
        assert (await post(client, at_the_caps(0))).status_code == 204


async def get_streamed(app: ASGIApp, path: str, query: str, headers: dict[str, str], *,
                       keep: bool) -> tuple[int, int, bytes]:
    """GET `path` through the app's ASGI interface: the status, the body's length and, if `keep`, the body.

    (httpx's ASGITransport gathers the whole body before it answers: measured through it, the peak would be the
    client's copy of the body, not the gateway's.)"""
    requested, finished = False, asyncio.Event()
    status, length, kept = 0, 0, bytearray()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, length
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            length += len(message.get("body", b""))
            if keep:
                kept.extend(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"gateway.test"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "client": ("127.0.0.1", 50000), "server": ("gateway.test", 80),
    }
    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    return status, length, bytes(kept)


def nth_at_the_caps(template: bytes, n: int) -> bytes:
    """`at_the_caps(n)`, from `at_the_caps(0)`: only the StudyInstanceUID differs, in as many digits."""
    first, uid = event(0)["StudyInstanceUID"].encode(), event(n)["StudyInstanceUID"].encode()
    assert len(uid) == len(first)
    assert template.count(first) == 1
    return template.replace(first, uid)


async def test_a_listing_of_the_most_events_at_the_caps_stays_under_the_documented_bound(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    app = create_app(make_settings(auth_mode="jwt", auth_jwt_secret=SECRET, database_url=url))
    template = at_the_caps(0)
    bodies = [nth_at_the_caps(template, n) for n in range(MAX_LIMIT)]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://gateway.test") as client:
        ids = []
        for body in bodies[:POSTED]:
            answer = await post(client, body)
            assert answer.status_code == 204, answer.text
            ids.append(int(answer.headers["x-event-id"]))
        # The others as the route stores them (parse_event), in one transaction: a thousand POSTs at the caps take
        # half a minute. They are the first one's parse with their own StudyInstanceUID.
        parsed = parse_event(template, json.loads(template))
        engine = create_engine(url)
        try:
            added = await EventStore(engine).add_many([
                replace(parsed, study_instance_uid=event(n)["StudyInstanceUID"], raw=bodies[n],
                        body={**parsed.body, "StudyInstanceUID": event(n)["StudyInstanceUID"]})
                for n in range(POSTED, MAX_LIMIT)], [])
        finally:
            await engine.dispose()
        assert all(created for _, created in added)
        ids += [event_id for event_id, _ in added]

        tracemalloc.start()
        try:
            status, length, _ = await get_streamed(app, "/new-exam-callback/events", f"limit={MAX_LIMIT}",
                                                   clinician(), keep=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 200
        # rawBody alone is twice each body (every backslash escaped): the answer is many times the bound.
        assert length > MAX_LIMIT * 2 * MAX_BODY_BYTES > 3 * LISTING_PEAK_BYTES
        assert peak < LISTING_PEAK_BYTES, f"peak {peak / 2**20:.0f} MiB"

        # And it is the whole listing: the pages of one batch each, by offset, one after the other.
        status, _, listing = await get_streamed(app, "/new-exam-callback/events", f"limit={MAX_LIMIT}",
                                                clinician(), keep=True)
        pages = [(await client.get("/new-exam-callback/events", headers=clinician(),
                                   params={"limit": str(LIST_BATCH), "offset": str(start)})).content[1:-1]
                 for start in range(0, MAX_LIMIT, LIST_BATCH)]
        newest = (await client.get(f"/new-exam-callback/events/{ids[-1]}", headers=clinician())).json()
    assert status == 200
    assert listing == b"[" + b",".join(pages) + b"]"
    assert listing.startswith(b'[{"id":%d,' % ids[-1])
    assert newest["rawBody"].encode() == bodies[-1]
    assert newest["event"] == json.loads(bodies[-1])


async def test_a_listing_longer_than_a_batch_holds_every_event_once_newest_first(database_url: str) -> None:
    async with gateway(database_url, []) as client:
        for n in range(2 * LIST_BATCH + 3):
            assert (await post(client, json.dumps(event(n)).encode())).status_code == 204
        newest_first = [event(n)["StudyInstanceUID"] for n in reversed(range(2 * LIST_BATCH + 3))]
        for params in ({"limit": "1000"}, {"limit": str(2 * LIST_BATCH)}, {"limit": str(LIST_BATCH + 1)},
                       {"limit": "1000", "offset": str(LIST_BATCH - 1)}, {"limit": "1000", "offset": "200"}):
            answer = await client.get("/new-exam-callback/events", headers=clinician(), params=params)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["cache-control"] == "private, no-store"
            offset, limit = int(params.get("offset", 0)), int(params["limit"])
            assert [e["studyInstanceUID"] for e in answer.json()] == newest_first[offset:offset + limit], params
