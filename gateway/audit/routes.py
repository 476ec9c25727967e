"""`GET /audit-events`: the stored audit trail, for `auditor` tokens only: "who saw patient X, and who was refused".

The answer is the gateway's own JSON, not a FHIR AuditEvent Bundle (docs/api/audit.md says why): each event is its
row id, when it was recorded, and the record exactly as stored (`gateway.audit.records`, PS3.15 A.5 terms), oldest
first, paged by a cursor (`after`, the last id of the page) rather than an offset, so that records written while an
auditor pages never shift a page. The trail is PHI: nothing of it is logged (the access line names the route only).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth.callers import Authenticator, Caller, Role, guarded
from gateway.edge.params import (
    PATIENT_ID_SPELLINGS,
    bad_parameter,
    instant_parameter,
    integer_parameter,
    optional_patient_id,
    single,
)
from gateway.errors import BadRequest
from gateway.store.audit import AuditStore, StoredAudit

PATH = "/audit-events"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PARAMETERS = ("PatientId", "since", "until", "limit", "after")
# A row id: `integer_parameter` takes at most 9 digits, and a busy gateway writes a billion records in months.
_CURSOR = re.compile(r"[0-9]{1,18}")


class AuditEvents:
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    async def search(self, request: Request, caller: Caller) -> Response:
        params = request.query_params
        unknown = sorted(set(params.keys()) - {*PATIENT_ID_SPELLINGS, *_PARAMETERS})
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]}", {"parameter": unknown[0], "allowed": list(_PARAMETERS)})
        patient_id = optional_patient_id(params, "PatientId")
        since, until = instant_parameter(params, "since"), instant_parameter(params, "until")
        if since is not None and until is not None and until <= since:
            raise bad_parameter("until", "must be later than since")
        limit = integer_parameter(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        after = single(params, "after")
        if after is not None and _CURSOR.fullmatch(after) is None:
            raise bad_parameter("after", "the cursor of a previous page's next link (ASCII digits)")
        # One more than the page: whether there is a next page is known without asking for an empty one.
        found = await self._store.search(patient_id=patient_id, since=since, until=until, limit=limit + 1,
                                         after_id=None if after is None else int(after))
        page = found[:limit]
        following = None
        if len(found) > limit:
            kept = [(name, value) for name, value in (("PatientId", patient_id), ("since", single(params, "since")),
                                                      ("until", single(params, "until"))) if value is not None]
            following = f"{PATH}?{urlencode([*kept, ('limit', str(limit)), ('after', str(page[-1].id))])}"
        body = {"events": [_event(stored) for stored in page], "next": following}
        # ASCII JSON, as stored: a hostile value (a lone surrogate, a NUL) stays an escape and cannot break the answer.
        return Response(json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":")),
                        media_type="application/json", headers={"Cache-Control": "no-store"})


def _event(stored: StoredAudit) -> dict[str, Any]:
    recorded = datetime.fromtimestamp(stored.row.recorded_at, UTC).isoformat().replace("+00:00", "Z")
    return {"id": stored.id, "recordedAt": recorded, "record": json.loads(stored.row.record)}


def routes(events: AuditEvents, authenticator: Authenticator) -> list[Route]:
    # The auditor alone: the trail says who saw whom, and the clinicians it records must not be able to read it.
    return [Route(PATH, guarded(authenticator, [Role.AUDITOR], events.search), methods=["GET"])]
