"""`AUDIT_RETENTION_DAYS`: records older than that are deleted, in batches, once the repository has them.

A purge pass deletes shipped records older than the cut-off in batches of `batch` (one short transaction each, so
that the group commit never waits long for the store), until none is left; then it sleeps `every_s`. Records not yet
shipped are kept whatever their age (`store.audit.AuditStore.purge_before`).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from gateway.ops.background import Background
from gateway.store.audit import AuditStore

log = structlog.get_logger(__name__)
DAY_S = 86_400.0


class AuditRetention:
    def __init__(self, *, store: AuditStore, days: float, batch: int = 1000, every_s: float = 3600.0) -> None:
        self._store = store
        self._keep_s = days * DAY_S
        self._batch = batch
        self._every_s = every_s
        self._background = Background("audit-retention", self._run)

    async def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    async def purge(self) -> int:
        """One pass: every shipped record older than the retention period; how many were deleted."""
        cutoff = time.time() - self._keep_s
        total = 0
        while (deleted := await self._store.purge_before(cutoff, self._batch)) > 0:
            total += deleted
            await asyncio.sleep(0)  # between batches, let the requests' commits in
        if total:
            log.info("audit_purged", records=total)
        return total

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retention retries at the next pass
                log.warning("audit_purge_failed", error=type(exc).__name__)
            await asyncio.sleep(self._every_s)
