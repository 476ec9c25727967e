"""Fan-out of stored events to `CALLBACK_URLS`: a background worker in the app's lifespan.

Each subscriber has its own slots (`CALLBACK_CONCURRENCY`): a slow or dead subscriber fills its own, never another's.
A delivery is a POST of the event's bytes exactly as the PACS sent them (`Claim.body`; the parsed body's JSON for
events without such bytes) with `X-Event-Id`, `X-Event-Attempt` and, with `CALLBACK_SIGNING_SECRET`,
`X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` over those same bytes. Its Content-Type is
`application/json` whatever the PACS declared (`text/plain`, form-urlencoded, none): the bytes are a JSON object in
UTF-8, which is what that type means (RFC 8259 §8.1, §11), and a subscriber must not form-decode them.
A 2xx answer is a delivery; anything else, a timeout or a connection error is retried after an exponential backoff
with jitter, up to `CALLBACK_MAX_ATTEMPTS` attempts, then the delivery is marked failed (visible in
`GET /new-exam-callback/events`).

Shutdown: the worker stops claiming, waits up to `CALLBACK_TIMEOUT_S` for attempts in flight, and gives back the
leases of those it had to interrupt so that another replica (or the next start) sends them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import random
import secrets
import time
from dataclasses import dataclass

import httpx
import structlog

from gateway.ops.background import Background
from gateway.store.events import Claim, EventStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are attempted (the `CALLBACK_*` settings, whose defaults live in `Settings` alone)."""

    timeout_s: float
    max_attempts: int
    backoff_base_s: float
    max_backoff_s: float
    lease_s: float
    poll_s: float
    concurrency: int  # attempts in flight per subscriber
    signing_secret: bytes | None

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1, 2, ...): between half and all of base x 2^(attempt-1),
        capped at `max_backoff_s` ("equal jitter": retries of many events spread out, none comes early)."""
        ceiling = min(self.max_backoff_s, self.backoff_base_s * 2.0 ** min(attempt - 1, 40))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` (docs/api/callbacks.md: the receiver's check)."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class DeliveryWorker:
    def __init__(self, *, store: EventStore, subscribers: list[str], policy: DeliveryPolicy) -> None:
        self.store = store
        self.subscribers = subscribers
        self.policy = policy
        self.owner = f"w-{secrets.token_hex(8)}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, dict[asyncio.Task[None], Claim]] = {url: {} for url in subscribers}
        self._background = Background("callback-delivery", self._run)
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """New events are stored: look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if not self.subscribers:
            return
        limits = httpx.Limits(max_connections=self.policy.concurrency * len(self.subscribers) + 4)
        self._client = httpx.AsyncClient(timeout=self.policy.timeout_s, limits=limits, follow_redirects=False)
        self._background.start()

    async def stop(self) -> None:
        """Stop claiming; let attempts in flight finish (up to the timeout); release the leases of the others."""
        self._stopping = True
        await self._background.stop()
        pending = {task: claim for tasks in self._inflight.values() for task, claim in tasks.items()}
        if pending:
            _, unfinished = await asyncio.wait(pending, timeout=self.policy.timeout_s + 1)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            await self.store.release(self.owner, [pending[task].delivery_id for task in unfinished])
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                for url in self.subscribers:
                    await self._fill(url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the worker
                log.warning("callback_claim_failed", error=type(exc).__name__, message=str(exc)[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.policy.poll_s)
            self._wake.clear()

    async def _fill(self, url: str) -> None:
        tasks = self._inflight[url]
        free = self.policy.concurrency - len(tasks)
        if free <= 0:
            return
        for claim in await self.store.claim(self.owner, url, free, self.policy.lease_s):
            task = asyncio.create_task(self._deliver(claim))
            tasks[task] = claim
            task.add_done_callback(functools.partial(self._done, tasks))

    def _done(self, tasks: dict[asyncio.Task[None], Claim], task: asyncio.Task[None]) -> None:
        tasks.pop(task, None)
        if not self._stopping:
            self._wake.set()  # a slot is free: there may be more due for this subscriber

    async def _deliver(self, claim: Claim) -> None:
        assert self._client is not None
        headers = {"Content-Type": "application/json", "X-Event-Id": str(claim.event_id),
                   "X-Event-Attempt": str(claim.attempt)}
        if self.policy.signing_secret is not None:
            headers["X-Signature"] = signature(self.policy.signing_secret, int(time.time()), claim.body)
        status: int | None = None
        try:
            response = await self._client.post(claim.subscriber, content=claim.body, headers=headers)
            status = response.status_code
            if 200 <= status < 300:
                await self.store.delivered(claim, status)
                log.info("callback_delivered", event_id=claim.event_id, attempt=claim.attempt, status=status)
                return
            error = f"answered {status}"
        except httpx.TimeoutException:
            error = f"no answer within {self.policy.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        final = claim.attempt >= self.policy.max_attempts
        retry_at = None if final else time.time() + self.policy.backoff(claim.attempt)
        await self.store.attempt_failed(claim, self.owner, status=status, error=error, retry_at=retry_at)
        log.info("callback_failed" if final else "callback_retry", event_id=claim.event_id, attempt=claim.attempt,
                 status=status, error=error)
