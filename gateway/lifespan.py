"""What happens before the first request and after the last: the order in which the components open and close.

Start: the database schema is migrated (Alembic; idempotent), the upstream pool opens, then the producers of work
start: the callback delivery worker, and the Orthanc change follower when new-exam detection is on.
Stop (SIGTERM ends up here): producers first, then the worker delivers or releases what it holds, then the
connections close. Nothing stored is lost: an event is in the database before its POST is answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import structlog
from starlette.applications import Starlette

from gateway.components import Components
from gateway.settings import AuthMode
from gateway.store.db import migrate

log = structlog.get_logger(__name__)

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def lifespan(parts: Components, *, auth_mode: AuthMode) -> Lifespan:
    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        if auth_mode is AuthMode.NONE:
            log.warning("auth_disabled", message="AUTH_MODE=none: every caller is a clinician; development only")
        log.info("gateway_started", upstream=parts.profile.name.value, auth_mode=auth_mode.value)
        await migrate(parts.engine)
        if parts.trail is not None:
            await parts.trail.start()
        async with parts.upstream:
            await parts.worker.start()
            if parts.follower is not None:
                await parts.follower.start()
            try:
                yield
            finally:
                if parts.follower is not None:
                    await parts.follower.stop()
                await parts.worker.stop()
                if parts.trail is not None:
                    await parts.trail.stop()
                await parts.audit.close()
                await parts.engine.dispose()
                await parts.authenticator.aclose()
                log.info("gateway_stopped")

    return run
