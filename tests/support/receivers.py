"""Callback subscribers for tests: real HTTP servers on loopback that record every delivery they get."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.servers import ThreadedServer


@dataclass(frozen=True)
class Delivery:
    event_id: str
    attempt: int
    body: bytes
    signature: str | None
    at: float  # time.monotonic() when it arrived


@dataclass
class Receiver:
    """`fail_first`: answer 500 to the first N attempts of each event; `hang_s`: wait that long before answering."""

    fail_first: int = 0
    hang_s: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        delivery = Delivery(request.headers.get("x-event-id", ""), int(request.headers.get("x-event-attempt", "0")),
                            body, request.headers.get("x-signature"), time.monotonic())
        with self._lock:
            self.deliveries.append(delivery)
            seen = sum(1 for d in self.deliveries if d.event_id == delivery.event_id)
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if seen <= self.fail_first:
            return Response("not now", status_code=500)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    def of(self, event_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.event_id == event_id]

    def per_event(self) -> Counter[str]:
        with self._lock:
            return Counter(d.event_id for d in self.deliveries)

    def events_by_study(self) -> dict[str, set[str]]:
        """The ids of the events received for each StudyInstanceUID. Delivery is at least once: an answer lost on
        the way back (a timeout, a connection the subscriber closed) brings the same event again, so a study
        announced once has one event id here however many deliveries carried it."""
        found: dict[str, set[str]] = {}
        with self._lock:
            for d in self.deliveries:
                found.setdefault(str(json.loads(d.body).get("StudyInstanceUID")), set()).add(d.event_id)
        return found

    def repeated_attempts(self) -> list[tuple[str, int]]:
        """(event id, attempt) pairs received more than once: none, if each delivery again is a counted retry."""
        with self._lock:
            return [key for key, n in Counter((d.event_id, d.attempt) for d in self.deliveries).items() if n > 1]


@contextlib.contextmanager
def receivers(*specs: Receiver) -> Iterator[list[Receiver]]:
    started: list[ThreadedServer] = []
    try:
        for spec in specs:
            spec.server = ThreadedServer(spec.app())
            spec.server.start()
            started.append(spec.server)
        yield list(specs)
    finally:
        for server in started:
            server.stop()


def verify(signature: str, body: bytes, secret: bytes, tolerance_s: float = 300) -> bool:
    """The receiver's check documented in docs/api/callbacks.md: recompute the HMAC of "<t>.<body>", compare in
    constant time, and refuse old timestamps (replays)."""
    parts = dict(part.split("=", 1) for part in signature.split(","))
    timestamp = parts["t"]
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(timestamp)) <= tolerance_s


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> None:
    """Poll `condition()` until true (or fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(step)
