"""Shipping the stored audit trail to the audit record repository, at least once, resuming after a restart.

The shipper leases the oldest unshipped records (`store.audit.AuditStore.claim_unshipped`), writes each as one
syslog message (`render`: the record's PS3.15 A.5.1 XML in an RFC 5424 frame), sends the batch (`send`: the syslog
connection), and marks the batch shipped once `send` returned. A failed send gives the leases back with a retry
time that doubles up to a cap; a gateway killed mid-batch leaves leases that expire, so the records go again. The
repository may therefore receive a record twice, never zero times: each message carries the record's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from gateway.audit.messages import to_xml
from gateway.audit.records import AuditRecord, Outcome
from gateway.audit.syslog import frame
from gateway.ops.background import Background
from gateway.store.audit import AuditStore, StoredAudit

log = structlog.get_logger(__name__)

Render = Callable[[StoredAudit], bytes]
Send = Callable[[list[bytes]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SyslogRendering:
    """A stored record as the repository receives it: its PS3.15 A.5.1 XML in one RFC 5424 syslog frame."""

    source_id: str  # AuditSourceID (A.5.1): which gateway wrote the record
    hostname: str
    app_name: str = "dicom-gateway"

    def __call__(self, stored: StoredAudit) -> bytes:
        record = AuditRecord.from_json(stored.row.record)
        # Severity 5 (notice) for a success, 4 (warning) for a failure or refusal (PS3.15 A.6; IHE ITI TF-2 3.20).
        severity = 5 if record.outcome is Outcome.SUCCESS else 4
        return frame(to_xml(record, self.source_id), hostname=self.hostname, app_name=self.app_name,
                     procid=str(stored.id), timestamp=record.when, severity=severity)


@dataclass(frozen=True, slots=True)
class ShipPolicy:
    batch: int  # records per send
    lease_s: float  # how long a claimed batch is ours before another shipper may take it
    poll_s: float  # how often to look when nothing woke the shipper
    gather_s: float  # after a wake, how long records gather before the batch is claimed
    retry_base_s: float  # the wait after a failed send, doubling per consecutive failure
    retry_max_s: float


class AuditShipper:
    def __init__(self, *, store: AuditStore, render: Render, send: Send, policy: ShipPolicy) -> None:
        self._store = store
        self._render = render
        self._send = send
        self._policy = policy
        self._owner = f"a-{secrets.token_hex(8)}"
        self._wake = asyncio.Event()
        self._failures = 0
        self._background = Background("audit-shipper", self._run)

    def wake(self) -> None:
        """Records were committed: ship now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        """Stop between batches; a batch in flight is not marked shipped and goes again after its lease."""
        await self._background.stop()

    async def ship_once(self) -> int:
        """Claim, send and mark one batch; how many records were shipped (0: nothing due)."""
        claimed = await self._store.claim_unshipped(self._owner, self._policy.batch, self._policy.lease_s)
        if not claimed:
            return 0
        ids = [record.id for record in claimed]
        try:
            await self._send([self._render(record) for record in claimed])
        except Exception as exc:  # noqa: BLE001 - any failure to ship is retried; the records stay stored
            self._failures += 1
            wait = min(self._policy.retry_max_s, self._policy.retry_base_s * 2 ** min(self._failures - 1, 20))
            await self._store.ship_failed(self._owner, ids, retry_at=time.time() + wait)
            # No record content here: it is PHI, and this is an operational log.
            log.warning("audit_ship_failed", error=type(exc).__name__, records=len(ids), retry_in_s=round(wait, 1))
            return 0
        self._failures = 0
        await self._store.shipped(self._owner, ids)
        return len(ids)

    async def _run(self) -> None:
        while True:
            try:
                shipped = await self.ship_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the shipper
                log.warning("audit_ship_claim_failed", error=type(exc).__name__)
                shipped = 0
            if shipped == self._policy.batch:
                continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._policy.poll_s)
            # Every commit wakes the shipper; claiming at once would cost two write transactions per record under
            # load, each queued with the requests' commits. Gathering makes it two per batch.
            await asyncio.sleep(self._policy.gather_s)
            self._wake.clear()
