"""Per-request facts shared between the middleware and the code it wraps (the upstream client adds its time)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestContext:
    request_id: str
    route: str | None = None  # the route template, once looked up (`edge.middleware.request_route`)
    upstream_seconds: float = 0.0
    upstream_calls: int = 0
    # Counts and sizes a handler adds to the request's access line (never PHI: the line is logged at info).
    facts: dict[str, int] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("gateway_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def enter_request(context: RequestContext) -> Token[RequestContext | None]:
    return _current.set(context)


def leave_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def add_upstream_time(seconds: float) -> None:
    context = _current.get()
    if context is not None:
        context.upstream_seconds += seconds
        context.upstream_calls += 1


def note(**facts: int) -> None:
    """Add counts to the current request's access line (one line per request instead of one more per fact)."""
    context = _current.get()
    if context is not None:
        context.facts.update(facts)
