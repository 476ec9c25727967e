"""`GET /uid`: a new DICOM UID under the organisation's root (`DICOM_UID_ROOT`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth.callers import Authenticator, Caller, Role, guarded
from gateway.dicom.uid import UidGenerator


def routes(generator: UidGenerator, authenticator: Authenticator) -> list[Route]:
    async def new_uid(request: Request, caller: Caller) -> Response:
        # Cache-Control: a UID must never be served twice, not even by a cache in between.
        return JSONResponse({"uid": generator.new()}, headers={"Cache-Control": "no-store"})

    # The roles that create data may ask (a UID reveals nothing and costs nothing); an auditor only reads the trail.
    return [Route("/uid", guarded(authenticator, [Role.CLINICIAN, Role.PATIENT, Role.PACS], new_uid), methods=["GET"])]
