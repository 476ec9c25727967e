"""Structured logging: one JSON line per event (or a readable console line in development).

The request id is in the request's context (`gateway.edge.context`), set by the request middleware, so every line
logged while a request is handled carries it (read from there, rather than through structlog's contextvars merge,
which copies the whole context at each line). PHI (patient names, IDs, birth dates) is only ever logged at debug
level: nothing in this module can tell PHI apart, so callers keep it out of info-and-above events.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from structlog.types import EventDict, WrappedLogger

from gateway.edge.context import current_request

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]


def add_request_id(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """The current request's id, on every line logged while it is handled."""
    context = current_request()
    if context is not None:
        event.setdefault("request_id", context.request_id)
    return event


def configure_logging(level: LogLevel, fmt: LogFormat) -> None:
    """Configure structlog and the stdlib loggers (uvicorn's) to emit through one renderer to stdout (what
    container runtimes and Kubernetes collect as the log stream; stderr keeps only a failure to start)."""
    shared: list[structlog.types.Processor] = [
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # uvicorn's and other libraries' stdlib records go through the same renderer, so the stream stays one format.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # The gateway writes its own access line (with route template, request id and upstream time): silence uvicorn's.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every request URL at info, and URLs carry patient IDs in QIDO queries: keep them at debug only.
    logging.getLogger("httpx").setLevel(max(numeric, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(numeric, logging.WARNING))
    # Alembic narrates every start ("Context impl ...") at info: only its warnings are worth a line.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
