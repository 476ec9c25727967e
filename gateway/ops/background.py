"""A component's background loop: started by the lifespan, cancelled when the gateway stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    """One named asyncio task: `start()` runs `loop()` in it; `stop()` cancels it and waits until it has ended.

    The loops run this way (the callback delivery, the Orthanc change follower, the audit shipper and the audit
    retention) catch their own failures and go on; cancellation is how they end, between two awaits.
    """

    def __init__(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._name = name
        self._loop = loop
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
