"""What following a PACS's change feed takes, whatever the PACS: the loop, the pending studies, the announcement.

A follower (`new_exams.OrthancChangeFollower`, `azure_feed.AzureChangeFeedFollower`) reads its feed a page at a
time and notes the studies it names as pending, with the feed position, in one transaction (`_read_page`, the
PACS's part). Then the pending studies that are complete by that PACS's rule (`_complete`) are looked up
(`_event`) and announced, each in the transaction that marks it announced (`EventStore.announce_study`): a study is
announced once, whatever restarts in between, and one the PACS no longer holds is forgotten. The studies are looked
at 100 at a time, in the order of their ids and in turn, so that those still receiving instances do not hold up
the others.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import structlog

from gateway.errors import GatewayError
from gateway.ops.background import Background
from gateway.ops.metrics import Metrics
from gateway.store.events import EventStore, NewEvent
from gateway.upstream.client import UpstreamClient

log = structlog.get_logger(__name__)
_LOOKED_AT = 100  # pending studies looked at per poll


class FeedFollower(ABC):
    def __init__(self, *, source: str, feed: str, upstream: UpstreamClient, store: EventStore,
                 subscribers: list[str], poll_s: float, on_events: Callable[[], None],
                 metrics: Metrics | None) -> None:
        self.source = source  # the events' SourceID, the metrics' `feed` label, the logs' name
        self.feed = feed  # the name the position and the pending studies are stored under
        self._upstream = upstream
        self._store = store
        self._subscribers = subscribers
        self._poll_s = poll_s
        self._on_events = on_events  # called after events are stored (wakes the delivery worker)
        self._metrics = metrics
        self._checked_up_to = ""
        self._background = Background(source, self._run)

    async def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    async def _run(self) -> None:
        while True:
            try:
                more = await self.step()
            except asyncio.CancelledError:
                raise
            except (GatewayError, OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("feed_failed", feed=self.source, error=type(exc).__name__, message=str(exc)[:200])
                more = False
            except Exception as exc:  # noqa: BLE001 - a database error must not end the follower
                # The type only: a database error's text quotes its parameters (UIDs, the event's patient).
                log.warning("feed_failed", feed=self.source, error=type(exc).__name__)
                more = False
            if not more:
                await asyncio.sleep(self._poll_s)

    async def step(self) -> bool:
        """Read one page of the feed, then announce the pending studies that are complete; True when more pages
        are waiting."""
        more = await self._read_page()
        await self._announce_complete()
        if self._metrics is not None:
            self._metrics.feed_last_poll.labels(self.source).set(time.time())
        return more

    def _lag(self, behind: int) -> None:
        if self._metrics is not None:
            self._metrics.feed_lag.labels(self.source).set(max(0, behind))

    async def _pending(self, quiet_since: float | None = None) -> list[str]:
        """The next pending studies in turn (with `quiet_since`: only those without a change since then)."""
        pending = await self._store.pending_studies(self.feed, _LOOKED_AT, after=self._checked_up_to,
                                                    quiet_since=quiet_since)
        self._checked_up_to = pending[-1] if len(pending) == _LOOKED_AT else ""
        return pending

    async def _announce_complete(self) -> None:
        announced = 0
        for study in await self._complete():
            event = await self._event(study)
            if await self._store.announce_study(self.feed, study, event, self._subscribers,
                                                quiet_since=self._quiet_since()) and event is not None:
                announced += 1
        if announced:
            log.info("feed_studies_announced", feed=self.source, studies=announced)
            if self._metrics is not None:
                self._metrics.feed_announced.labels(self.source).inc(announced)
            self._on_events()

    def _quiet_since(self) -> float | None:
        """A PACS whose studies are complete after a quiet time: the time a study's last change must predate (checked
        again as it is announced: another replica may have seen a change meanwhile). None: no such rule."""
        return None

    @abstractmethod
    async def _read_page(self) -> bool:
        """Read one page, note its studies with the new position (`EventStore.note_studies`); True if more wait."""

    @abstractmethod
    async def _complete(self) -> list[str]:
        """Pending studies to announce now: complete by the PACS's rule, or gone from it."""

    @abstractmethod
    async def _event(self, study: str) -> NewEvent | None:
        """The event announcing `study` as the PACS holds it now; None when it holds none of it."""
