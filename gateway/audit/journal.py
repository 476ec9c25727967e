"""Group commit of audit records: each request waits for the commit of the batch that holds its record.

A request's answer must not leave before its audit record is durable (issue 13), but a transaction per request
would cost a commit (an fsync on SQLite with `synchronous=FULL`) per request. So records are queued, and one writer
task commits everything queued as one transaction: while a commit is in flight, the records of the requests that
arrive meanwhile gather into the next batch. Under load, many requests share a commit.

A request with no other in flight (`alone`) has no record to share one with: when nothing is queued or being
committed and the store can commit without waiting (`AuditStore.add_now`: SQLite's inline connection, its lock
free), its record is committed at once, in the request's own turn of the event loop. That spares it the two turns
of a hand-over to the writer task and back: in one A/B of searches at one client, 0.2 ms of CPU and 0.1 ms of
waiting per request.

If the store fails, every record of the failed batch raises `AuditUnavailable` (503) in its request: data requests
fail closed rather than answer without a record. The journal is opened and closed by the lifespan; records written
while it is closing still get their commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.errors import ServiceUnavailable
from gateway.store.audit import AuditRow, AuditStore

log = structlog.get_logger(__name__)


class AuditUnavailable(ServiceUnavailable):
    code = "audit_unavailable"


class AuditJournal:
    def __init__(self, *, store: AuditStore, max_batch: int = 500, on_commit: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_commit = on_commit  # told after each commit (the shipper: records to send)
        self._max_batch = max_batch
        self._queue: list[tuple[AuditRow, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._committing = False  # a batch is being committed (its transaction may be waiting in a thread)
        self.commits = 0  # transactions committed: the tests read how many records shared one

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-journal")

    async def stop(self) -> None:
        """Commit what is queued, then end the writer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def write(self, row: AuditRow, *, alone: bool = False) -> int:
        """Queue `row` and return its id once the batch that holds it is committed; `AuditUnavailable` otherwise.

        `alone`: no other request is in flight that could share the commit; then it is made now if it can be."""
        if self._task is None or self._task.done():
            raise AuditUnavailable("the audit trail is not accepting records", {"reason": "not running"})
        if alone and not self._queue and not self._committing:
            try:
                ids = self._store.add_now([row])
            except Exception as exc:  # noqa: BLE001 - whatever the store raised, the request fails closed
                raise _failed(exc, 1) from None
            if ids is not None:
                self._committed()
                return ids[0]
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((row, done))
        self._wake.set()
        # A request cancelled meanwhile cancels `done`, not its row: the batch commits the record all the same.
        # (Not asyncio.shield: its outer future costs the answer another turn of the loop.)
        return await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                self._committing = True
                try:
                    await self._commit(batch)
                finally:
                    self._committing = False
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[AuditRow, asyncio.Future[int]]]) -> None:
        try:
            ids = await self._store.add_many([row for row, _ in batch])
        except Exception as exc:  # noqa: BLE001 - whatever the store raised, each waiting request fails closed
            for _, done in batch:
                if not done.done():  # cancelled: its request is gone
                    done.set_exception(_failed(exc, len(batch)))
            return
        self._committed()
        for (_, done), record_id in zip(batch, ids, strict=True):
            if not done.done():
                done.set_result(record_id)

    def _committed(self) -> None:
        self.commits += 1
        if self._on_commit is not None:
            self._on_commit()


def _failed(exc: Exception, records: int) -> AuditUnavailable:
    """Log a failed commit (the error's type only: a database error's text can quote the row, and the row is PHI)
    and what each of its requests is answered."""
    log.error("audit_store_failed", error=type(exc).__name__, records=records)
    return AuditUnavailable("the audit trail could not be written", {"reason": type(exc).__name__})
