"""The audit trail as one component: the journal the requests wait on, the classifier, and the background parts
(the syslog shipper, in a process of its own, when `AUDIT_SYSLOG_URL` is set; retention when `AUDIT_RETENTION_DAYS`
is). Built by `components`, opened and closed by `lifespan`, put in front of the routes by `app`
(`AuditMiddleware`)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit.apart import ShipperProcess
from gateway.audit.classify import Classifier
from gateway.audit.journal import AuditJournal
from gateway.audit.retention import AuditRetention


@dataclass(frozen=True, slots=True)
class AuditTrail:
    journal: AuditJournal
    classifier: Classifier
    shipper: ShipperProcess | None = None
    retention: AuditRetention | None = None

    async def start(self) -> None:
        await self.journal.start()
        if self.shipper is not None:
            await self.shipper.start()
        if self.retention is not None:
            await self.retention.start()

    async def stop(self) -> None:
        """After the last request: the journal commits what is queued; the shipper stops between batches."""
        await self.journal.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.shipper is not None:
            await self.shipper.stop()
