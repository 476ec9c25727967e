"""`POST /new-exam-callback` bodies as PACSs send them (issue 11, point 4): the media types, the liberal parse, the
bytes kept and delivered as received."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from tests.callbacks.test_callbacks import SEED, event, gateway, pacs
from tests.contract.curl import arguments
from tests.contract.page import CALLBACK
from tests.support.exams_support import clinician
from tests.support.receivers import Receiver, receivers, verify, wait_until

# The contract page's "Example of callback request from PACS": the argument of its `--data '...'`, byte for byte
# (newlines and indentation included: curl sends a literal --data argument as it is).
_ARGS = arguments(CALLBACK.request)
PAGE_EXAMPLE = _ARGS[_ARGS.index("--data") + 1].encode()
FORM = "application/x-www-form-urlencoded"  # what curl --data sends


@dataclass
class TypedReceiver(Receiver):
    """A receiver that also records the Content-Type of each delivery."""

    content_types: list[str] = field(default_factory=list)

    async def _hook(self, request: Request) -> Response:
        self.content_types.append(request.headers.get("content-type", ""))
        return await super()._hook(request)


async def send(client: httpx.AsyncClient, content: bytes, content_type: str | None) -> httpx.Response:
    headers = pacs()
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = client.build_request("POST", "/new-exam-callback", content=content, headers=headers)
    if content_type is None:
        assert "content-type" not in request.headers  # httpx adds none for raw content: the case is real
    return await client.send(request)


async def stored(client: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    answer = await client.get(f"/new-exam-callback/events/{event_id}", headers=clinician())
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def all_stored(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await client.get("/new-exam-callback/events", headers=clinician())
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


async def test_the_pages_example_sent_as_curl_sends_it_is_stored_and_delivered_byte_for_byte(
    database_url: str,
) -> None:
    with receivers(TypedReceiver()) as [subscriber]:
        assert isinstance(subscriber, TypedReceiver)
        async with gateway(database_url, [subscriber]) as client:
            answer = await client.post("/new-exam-callback", content=PAGE_EXAMPLE,
                                       headers={"Content-Type": FORM, "Accept": "*/*", **pacs()})
            assert answer.status_code == 204, answer.text
            assert answer.content == b""
            event_id = answer.headers["x-event-id"]
            await wait_until(lambda: bool(subscriber.of(event_id)))
            [delivery] = subscriber.of(event_id)
            assert delivery.body == PAGE_EXAMPLE
            assert subscriber.content_types == ["application/json"]
            found = await stored(client, event_id)
            assert found["event"] == json.loads(PAGE_EXAMPLE)  # StudyID null included
            assert found["rawBody"].encode() == PAGE_EXAMPLE
            assert found["studyInstanceUID"] == "1.3.76.13.90696.2.20130926082332.5279531.1"
            assert found["sourceId"] == "O3PROD"


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
    "application/json; charset=iso-8859-1",  # no charset is defined for JSON (RFC 8259 §11): the bytes are UTF-8
    "text/plain", "text/plain; charset=utf-8", FORM, f"{FORM}; charset=UTF-8", None,
])
async def test_a_json_object_is_accepted_under_every_type_pacs_vendors_use(tmp_path: Path,
                                                                          content_type: str | None) -> None:
    raw = json.dumps(SEED, indent=2, ensure_ascii=False).replace('"MARIO^ROSSI"', '"MARIO^RÖSSI"').encode()
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, raw, content_type)
        assert answer.status_code == 204, answer.text
        found = await stored(client, answer.headers["x-event-id"])
        assert found["event"] == {**SEED, "PatientName": "MARIO^RÖSSI"}
        assert found["rawBody"].encode() == raw


@pytest.mark.parametrize("content_type", [
    "application/xml", "multipart/form-data; boundary=x", "application/dicom+json", "text/html",
    "application/octet-stream",
])
async def test_other_media_types_are_415_and_nothing_is_stored(tmp_path: Path, content_type: str) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, json.dumps(SEED).encode(), content_type)
        assert answer.status_code == 415, answer.text
        error = answer.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["code"] == "unsupported_media_type"
        assert error["details"]["content_type"] == content_type
        assert error["details"]["accepted"] == ["application/json", FORM, "text/plain"]
        assert await all_stored(client) == []


@pytest.mark.parametrize(("content", "content_type", "reason"), [
    (b"a=1&b=2", FORM, "not valid JSON"),  # a real form is not the JSON object asked for
    (b"%7B%22SourceID%22%3A%22PACS-1%22%7D", FORM, "not valid JSON"),  # nor URL-encoded JSON: it is never decoded
    (b"payload=" + json.dumps(SEED).encode(), FORM, "not valid JSON"),
    (b"", FORM, "the body is empty"),
    (b"", None, "the body is empty"),
    (b"  \r\n", "application/json", "the body is empty"),
    (b"{not json", "text/plain", "not valid JSON"),
    (b'{"SourceID": "PACS-1",}', None, "not valid JSON"),
    (b"[1, 2]", "application/json", "a JSON array"),
    (b'"text"', "text/plain", "a JSON string"),
    (b"null", None, "a JSON null"),
    (b"239", FORM, "a JSON number"),
    (b"true", FORM, "a JSON boolean"),
    (b'{"SourceID": "PACS-1", "PatientName": "M\xe9RIO"}', "application/json; charset=iso-8859-1", "not UTF-8"),
    (json.dumps(SEED).encode("utf-16"), "application/json", "not UTF-8"),
])
async def test_a_body_that_is_not_a_json_object_is_400_and_nothing_is_stored(
    tmp_path: Path, content: bytes, content_type: str | None, reason: str
) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, content, content_type)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["code"] == "bad_request"
        assert error["message"].startswith("the body must be a JSON object")
        assert error["details"]["reason"].startswith(reason), error
        if content_type == FORM:
            assert "is not decoded" in error["message"]  # says how a form-urlencoded body was read
        assert await all_stored(client) == []


async def test_a_name_given_twice_is_400_because_receivers_disagree_on_which_counts(tmp_path: Path) -> None:
    # Python keeps the last one, other parsers the first: the gateway and a subscriber reading the same bytes
    # would see different patients.
    raw = json.dumps(SEED)[:-1].encode() + b', "PatientID": "SOMEONE-ELSE"}'
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, raw, FORM)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["details"]["fields"] == [
            {"field": "PatientID", "message": "appears more than once in its object"}]
        assert await all_stored(client) == []


async def test_a_number_too_long_to_read_is_400_not_500(tmp_path: Path) -> None:
    raw = json.dumps(SEED)[:-1].encode() + b', "Extra": ' + b"7" * 5000 + b"}"
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, raw, FORM)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["details"]["fields"] == [
            {"field": "(body)", "message": "holds a number with too many digits to read"}]


async def test_a_byte_order_mark_is_ignored_for_parsing_and_kept_in_the_bytes(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbf" + json.dumps(SEED).encode()
    with receivers(Receiver()) as [subscriber]:
        async with gateway(f"sqlite:///{tmp_path / 'e.db'}", [subscriber]) as client:
            answer = await send(client, raw, "text/plain")
            assert answer.status_code == 204, answer.text
            event_id = answer.headers["x-event-id"]
            assert (await stored(client, event_id))["event"] == SEED
            await wait_until(lambda: bool(subscriber.of(event_id)))
            assert subscriber.of(event_id)[0].body == raw


async def test_unambiguous_spellings_are_parsed_and_the_bytes_are_kept_as_sent(database_url: str) -> None:
    raw = json.dumps({
        **SEED, "NumberOfStudyRelatedSeries": "2", "NumberOfStudyRelatedInstances": "0239", "PatientSex": "f",
        "ModalitiesInStudy": "CT\\MR", "AeTitles": "CT01", "StationNames": "", "StudyID": None,
    }).encode()
    with receivers(Receiver()) as [subscriber]:
        async with gateway(database_url, [subscriber]) as client:
            answer = await send(client, raw, FORM)
            assert answer.status_code == 204, answer.text
            event_id = answer.headers["x-event-id"]
            found = await stored(client, event_id)
            assert found["event"] == {
                **SEED, "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 239, "PatientSex": "F",
                "ModalitiesInStudy": ["CT", "MR"], "AeTitles": ["CT01"], "StationNames": [], "StudyID": None,
            }
            assert list(found["event"]) == list(json.loads(raw))  # same fields, same order
            assert found["rawBody"].encode() == raw
            await wait_until(lambda: bool(subscriber.of(event_id)))
            assert subscriber.of(event_id)[0].body == raw  # subscribers get what the PACS sent, not the parse
            listed = (await client.get("/new-exam-callback/events", headers=clinician(),
                                       params={"PatientID": SEED["PatientID"]})).json()
            assert [e["id"] for e in listed] == [int(event_id)]


@pytest.mark.parametrize("sex", ["m", "f", "o", "F ", "M"])
async def test_patient_sex_in_any_case_is_upper_case(tmp_path: Path, sex: str) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, json.dumps({**SEED, "PatientSex": sex}).encode(), "application/json")
        assert answer.status_code == 204, answer.text
        assert (await stored(client, answer.headers["x-event-id"]))["event"]["PatientSex"] == sex.strip().upper()


async def test_patient_sex_outside_the_dicom_values_is_kept_as_sent(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, json.dumps({**SEED, "PatientSex": "u"}).encode(), "application/json")
        assert answer.status_code == 204, answer.text
        assert (await stored(client, answer.headers["x-event-id"]))["event"]["PatientSex"] == "u"


@pytest.mark.parametrize("count", [
    "2.5", "-1", "abc", "\uff11\uff12", "\u00b2", "", " 239", "239 ", "+5", "1e3", "0x10", "10000001", "9" * 5000,
    True, False, 2.5, -1, [1], {"n": 1},
])
@pytest.mark.parametrize("name", ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"])
async def test_a_count_that_is_not_a_non_negative_integer_or_its_digits_is_400(tmp_path: Path, name: str,
                                                                              count: Any) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, json.dumps({**SEED, name: count}).encode(), FORM)
        assert answer.status_code == 400, answer.text
        assert [p["field"] for p in answer.json()["error"]["details"]["fields"]] == [name]
        assert await all_stored(client) == []


@pytest.mark.parametrize(("name", "value"), [
    ("ModalitiesInStudy", 5), ("ModalitiesInStudy", {"a": "CT"}), ("AeTitles", [1]), ("StationNames", True),
    ("ModalitiesInStudy", "x" * 65),
])
async def test_a_list_that_is_neither_strings_nor_a_string_is_400(tmp_path: Path, name: str, value: Any) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, json.dumps({**SEED, name: value}).encode(), "application/json")
        assert answer.status_code == 400, answer.text
        assert all(p["field"].startswith(name) for p in answer.json()["error"]["details"]["fields"])


async def test_byte_different_bodies_with_the_same_fields_are_one_event_kept_as_first_received(
    database_url: str,
) -> None:
    first = json.dumps(SEED, separators=(",", ":")).encode()
    spelled_otherwise = json.dumps(
        {**dict(reversed(list(SEED.items()))), "NumberOfStudyRelatedInstances": "120", "PatientSex": "m"},
        indent=4).encode()
    with receivers(Receiver()) as [subscriber]:
        async with gateway(database_url, [subscriber]) as client:
            one = await send(client, first, "application/json")
            two = await send(client, spelled_otherwise, FORM)
            assert one.status_code == two.status_code == 204
            assert one.headers["x-event-id"] == two.headers["x-event-id"]
            other = await send(client, json.dumps({**SEED, "PatientSex": "F"}).encode(), "text/plain")
            assert other.headers["x-event-id"] != one.headers["x-event-id"]  # another field value: another event
            await wait_until(lambda: len(subscriber.per_event()) == 2)
            await asyncio.sleep(0.3)
            assert [d.body for d in subscriber.of(one.headers["x-event-id"])] == [first]
            assert (await stored(client, one.headers["x-event-id"]))["rawBody"].encode() == first


async def test_the_signature_covers_the_bytes_as_received(tmp_path: Path) -> None:
    secret = "whsec-0123456789abcdef"
    raw = (b'{ "SourceID" : "PACS-1",\n\t"StudyInstanceUID":"1.2.826.0.1.3680043.10.1234.9",'
           b'"EventType":"COMPLETED", "NumberOfStudyRelatedInstances": "7", "PatientName": "M\\u00c4RIO" }\n')
    with receivers(Receiver()) as [subscriber]:
        async with gateway(f"sqlite:///{tmp_path / 'e.db'}", [subscriber], callback_signing_secret=secret) as client:
            answer = await send(client, raw, "text/plain; charset=utf-8")
            assert answer.status_code == 204, answer.text
            event_id = answer.headers["x-event-id"]
            await wait_until(lambda: bool(subscriber.of(event_id)))
    [delivery] = subscriber.of(event_id)
    assert delivery.body == raw
    assert delivery.signature is not None
    assert verify(delivery.signature, raw, secret.encode())
    parsed = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert not verify(delivery.signature, parsed, secret.encode())  # not over a re-serialisation


async def test_events_keep_their_layout_with_the_raw_body_beside_it(tmp_path: Path) -> None:
    async with gateway(f"sqlite:///{tmp_path / 'e.db'}", []) as client:
        answer = await send(client, json.dumps(event(1)).encode(), None)
        assert answer.status_code == 204, answer.text
        [listed] = await all_stored(client)
        assert set(listed) == {"id", "receivedAt", "origin", "sourceId", "studyInstanceUID", "eventType", "event",
                               "rawBody", "deliveries"}
        assert listed["rawBody"] == json.dumps(event(1))
        assert listed == await stored(client, answer.headers["x-event-id"])
