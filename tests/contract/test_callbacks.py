"""The page's "Callbacks" section: the PACS's example, sent with curl as printed (`--data`, so curl says
`application/x-www-form-urlencoded`), is stored and reaches the subscriber as the very bytes the PACS sent."""

from __future__ import annotations

import asyncio

import httpx

from tests.contract.conftest import Deployment
from tests.contract.curl import arguments
from tests.contract.page import CALLBACK
from tests.support.receivers import wait_until


async def test_callback_request_from_pacs(exams_gateway: Deployment) -> None:
    assert exams_gateway.receiver is not None
    before = len(exams_gateway.receiver.deliveries)
    answer = await asyncio.to_thread(exams_gateway.send, CALLBACK.request, None, "pacs")
    assert answer.status == 204, answer.body
    assert answer.body == b""
    sent = arguments(CALLBACK.request)[arguments(CALLBACK.request).index("--data") + 1].encode()
    await wait_until(lambda: len(exams_gateway.receiver.deliveries) > before)  # type: ignore[union-attr]
    assert exams_gateway.receiver.deliveries[-1].body == sent
    events = httpx.get(f"{exams_gateway.url}/new-exam-callback/events",
                       params={"StudyInstanceUID": "1.3.76.13.90696.2.20130926082332.5279531.1"},
                       headers=exams_gateway.headers("clinician"))
    assert events.status_code == 200, events.text
    assert events.json(), "the event was not stored"
