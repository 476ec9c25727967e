"""Every error the gateway answers with, and the one place that turns them into JSON.

Hierarchy (status code, error code)::

    GatewayError
    ├── ClientError                      4xx: the caller can fix it
    │   ├── BadRequest                   400 bad_request
    │   ├── Unauthorized                 401 unauthorized (+ WWW-Authenticate)
    │   ├── Forbidden                    403 forbidden
    │   ├── NotFound                     404 not_found
    │   │   └── OutOfScope               404 not_found, audited as a scope refusal
    │   ├── MethodNotAllowed             405 method_not_allowed (+ Allow)
    │   ├── NotAcceptable                406 not_acceptable (no representation satisfies Accept)
    │   ├── Conflict                     409 conflict
    │   ├── PayloadTooLarge              413 payload_too_large
    │   ├── UnsupportedMediaType         415 unsupported_media_type
    │   └── UnprocessableContent         422 unprocessable_content
    ├── NotImplementedByUpstream         501 not_implemented
    ├── ServiceUnavailable               503 service_unavailable
    └── UpstreamError                    the PACS failed us, never the caller's fault
        ├── UpstreamUnavailable          502 upstream_unavailable  (refused, reset, dropped connection)
        ├── UpstreamTimeout              504 upstream_timeout
        ├── UpstreamFailed               502 upstream_error        (upstream 5xx or unexpected answer)
        └── UpstreamCredentialsRejected  502 upstream_credentials_rejected (upstream 401/403)

The body is always ``{"error": {"code", "message", "details"}}``. An upstream 401/403 is never forwarded as the
client's own 401/403: the client's credentials were fine, the gateway's were not.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from gateway.audit.facts import note_refusal

log = structlog.get_logger(__name__)

Details = dict[str, Any] | list[Any] | None
# Conflicts (their details' reason) that are refusals for scope: an upload into another patient's UIDs.
SCOPE_REFUSALS = frozenset({"uid_in_use", "uid_shared_within_upload"})


class GatewayError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: Details = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class ClientError(GatewayError):
    status_code = 400
    code = "bad_request"


class BadRequest(ClientError):
    pass


class Unauthorized(ClientError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, details: Details = None, *, error: str = "invalid_token") -> None:
        # RFC 6750 §3: the challenge names the scheme and, when a token was sent, why it was refused.
        challenge = f'Bearer realm="dicom-gateway", error="{error}"' if error else 'Bearer realm="dicom-gateway"'
        super().__init__(message, details, headers={"WWW-Authenticate": challenge})


class Forbidden(ClientError):
    status_code = 403
    code = "forbidden"


class NotFound(ClientError):
    status_code = 404
    code = "not_found"


class OutOfScope(NotFound):
    """A UID the caller may not reach (another patient's, outside a viewer token's study): answered exactly as a
    `NotFound`, so that nobody learns another patient's UIDs exist, and audited as the refusal it is."""


class MethodNotAllowed(ClientError):
    status_code = 405
    code = "method_not_allowed"


class NotAcceptable(ClientError):
    status_code = 406
    code = "not_acceptable"


class Conflict(ClientError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ClientError):
    status_code = 415
    code = "unsupported_media_type"


class UnprocessableContent(ClientError):
    status_code = 422
    code = "unprocessable_content"


class NotImplementedByUpstream(GatewayError):
    status_code = 501
    code = "not_implemented"


class ServiceUnavailable(GatewayError):
    status_code = 503
    code = "service_unavailable"


class UpstreamError(GatewayError):
    status_code = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UpstreamFailed(UpstreamError):
    code = "upstream_error"


class UpstreamCredentialsRejected(UpstreamError):
    code = "upstream_credentials_rejected"


def error_response(status_code: int, code: str, message: str, details: Details = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if isinstance(exc, UpstreamError):
        # Upstream faults are the operator's business: log them (no PHI: the message and details are ours).
        log.warning("upstream_failure", code=exc.code, message=exc.message, details=exc.details)
    reason = exc.details.get("reason") if isinstance(exc.details, dict) else None
    if isinstance(exc, OutOfScope):
        note_refusal("out_of_scope")
    elif reason in SCOPE_REFUSALS:
        note_refusal(str(reason))
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


_HTTP_CODES = {404: ("not_found", "no such resource"), 405: ("method_not_allowed", "method not allowed")}
# Starlette's own 400s (a malformed multipart body, too many files or fields) keep their message.
_CODE_BY_STATUS = {400: "bad_request", 413: "payload_too_large"}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), in our JSON shape."""
    assert isinstance(exc, HTTPException)
    code, message = _HTTP_CODES.get(
        exc.status_code, (_CODE_BY_STATUS.get(exc.status_code, "http_error"), str(exc.detail))
    )
    details: dict[str, Any] = {"path": request.url.path}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        details["method"] = request.method
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, message, details, headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path has (RFC 9110 §15.5.6). Starlette's 405 names only the methods of the first route whose
    path matches, and a path may be served by several routes (`/dicomweb/...`: one for GET, one for POST)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: answer 500 in our shape; Starlette's ServerErrorMiddleware re-raises, so it is logged with its trace."""
    return error_response(500, "internal_error", "the gateway failed to handle this request")


EXCEPTION_HANDLERS = {
    GatewayError: handle_gateway_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
