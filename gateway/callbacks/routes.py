"""`/new-exam-callback`: a PACS reports a new exam; the gateway stores the event and fans it out
(`gateway.callbacks.delivery`).

`POST /new-exam-callback` answers 204 only once the event and its deliveries are committed. Callers: a token with the
`pacs` role, or a PACS that can only send a fixed header: `Authorization: Bearer <CALLBACK_AUTH_TOKEN>` or
`X-Callback-Token: <CALLBACK_AUTH_TOKEN>` (compared in constant time). Clinicians read the stored events and their
delivery state, and may ask for an event to be delivered again.

The body is a JSON object, sent as a PACS's vendor wrote it: `application/json` (any charset parameter),
`text/plain`, `application/x-www-form-urlencoded` (what `curl --data` sends, the contract page's own example: the
bytes are the JSON text, never form-decoded) or without a Content-Type; anything else is 415. The event is stored
twice over: its bytes exactly as received, which subscribers get (and which a signature covers), and its fields
as parsed, where the parse is liberal only when the meaning is unambiguous: counts as decimal digit strings
(`"239"`), `PatientSex` in lower case, and a string for a list of DICOM values (`"CT"`, `"CT\\MR"`). Names that
subscribers' decoders could take for one another are refused: the same name twice in an object, also in another
case (gateway.edge.bodies), and an event field in another case (`patientID`), which would otherwise be kept as an
unknown field while a decoder that ignores case reads it as `PatientID`.

A body is at most `MAX_BODY_BYTES` (413) and `MAX_BODY_VALUES` JSON values (400). An event is about 1 KB and 20-odd
values (the contract page's example: 800 bytes, 23 values): the caps leave vendors room for extra fields. The value
cap bounds what parsing a body costs (a Python object per value, up to ~190 bytes for 5 bytes of text: under 1 MiB).
The events API never parses a stored event again (`event_json` splices its JSON text in), so an event it shows
costs its text: the bytes received, its parsed fields' JSON (at most ~1.5 times as long: `"\\\\"` is `["",""]`) and
its rendering (`rawBody` escaped: at most twice as long). The listing reads `LIST_BATCH` events at a time and
streams them, so its memory is one batch's whatever its `limit`: about 15 MiB at the caps
(tests/test_callback_limits.py holds a listing of 1000 such events under 32 MiB; with 1 MiB bodies, no value cap
and the whole listing parsed and rendered at once, 1000 events of 64 KiB took 1.2 GiB).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.audit.facts import note_actor, note_patient, note_study
from gateway.audit.records import Actor
from gateway.auth.callers import Authenticator, Caller, Role, guarded, note_caller
from gateway.callbacks.delivery import DeliveryWorker
from gateway.dicom import vr
from gateway.dicom.uid import is_valid_uid
from gateway.edge.bodies import read_json_object
from gateway.edge.params import bad_parameter, instant_parameter, integer_parameter, single
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.store.events import EventStore, NewEvent, StoredEvent

MAX_BODY_BYTES = 64 * 1024  # the caps and the batch: see the module's docstring
MAX_BODY_VALUES = 4096
LIST_BATCH = 50
MEDIA_TYPES = frozenset({"application/json", "text/plain", "application/x-www-form-urlencoded", ""})
_MAX_COUNT = 10_000_000
_SEXES = frozenset({"M", "F", "O"})  # PS3.3 C.7.1.1 Patient's Sex (0010,0040): the enumerated values


def _count(value: object) -> object:
    """A count given as its decimal digits ("239") is that number. Only ASCII digits: "2.5", "-1", full-width or
    other non-ASCII digits (U+FF11..., which str.isdigit accepts) and booleans are left to fail as not integers."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value.lstrip("0")) > len(str(_MAX_COUNT)):  # int() of a huge digit string costs, and fails anyway
            raise ValueError(f"a count of at most {_MAX_COUNT}")
        return int(value)
    return value


def _values(value: object) -> object:
    """A string where a list is expected is that list in DICOM's own encoding: values separated by backslashes
    (PS3.5 §6.4). The three lists hold AE, CS and SH values, which cannot contain a backslash (PS3.5 Table 6.2-1),
    so the split is unambiguous: "CT" is ["CT"], "CT\\MR" is ["CT", "MR"], "" is no value at all."""
    if isinstance(value, str):
        return value.split("\\") if value else []
    return value


def _sex(value: object) -> object:
    """M, F or O in any case (and with DICOM's trailing space padding, PS3.5 §6.2 CS) is that value; other strings
    are kept as sent (systems send U, A, N, ... which the gateway does not reinterpret)."""
    if isinstance(value, str) and value.strip(" ").upper() in _SEXES:
        return value.strip(" ").upper()
    return value


Text = Annotated[StrictStr, Field(max_length=1024)]
Texts = Annotated[list[Annotated[StrictStr, Field(max_length=64)]], BeforeValidator(_values)]
Count = Annotated[StrictInt, BeforeValidator(_count), Field(ge=0, le=_MAX_COUNT)]


class NewExamEvent(BaseModel):
    """The callback body: known fields are type-checked, unknown ones kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    SourceID: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    StudyInstanceUID: StrictStr
    EventType: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    AccessionNumber: Text | None = None
    PatientID: Annotated[StrictStr, Field(max_length=64)] | None = None
    NumberOfStudyRelatedSeries: Count | None = None
    NumberOfStudyRelatedInstances: Count | None = None
    ModalitiesInStudy: Texts | None = None
    AeTitles: Texts | None = None
    StationNames: Texts | None = None
    StudyDate: StrictStr | None = None
    StudyTime: StrictStr | None = None
    StudyID: Text | None = None
    ReferringPhysicianName: Text | None = None
    StudyDescription: Text | None = None
    PatientName: Text | None = None
    PatientBirthDate: StrictStr | None = None
    PatientSex: Annotated[StrictStr, BeforeValidator(_sex), Field(max_length=16)] | None = None

    @field_validator("StudyInstanceUID")
    @classmethod
    def _uid(cls, value: str) -> str:
        if not is_valid_uid(value):
            raise ValueError("a DICOM UID: 1-64 digits and dots, no leading zeros")
        return value

    @field_validator("StudyDate", "PatientBirthDate")
    @classmethod
    def _dates(cls, value: str | None) -> str | None:
        return vr.optional_da(value)

    @field_validator("StudyTime")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return vr.optional_tm_shape(value)


# The event's fields by their names casefolded (gateway.edge.bodies: decoders that ignore case would read `patientID`
# as PatientID).
_FIELDS = {name.casefold(): name for name in NewExamEvent.model_fields}


def parse_event(raw: bytes, body: dict[str, Any]) -> NewEvent:
    """The event to store from a callback body (its bytes and the object they hold); 400 with one detail per
    offending field. The parsed body is the object with each known field as checked (counts as numbers, ...):
    same keys, same order; unknown fields as sent, except a known field's name in another case."""
    misspelt = {key: _FIELDS[key.casefold()] for key in body
                if key not in NewExamEvent.model_fields and key.casefold() in _FIELDS}
    if misspelt:
        raise BadRequest("the event is not valid", {"fields": [
            {"field": key, "message": f"is {name} in another case: send it as {name}"}
            for key, name in misspelt.items()]})
    try:
        checked = NewExamEvent.model_validate(body)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in error["loc"]) or "(body)", "message": error["msg"]}
                    for error in exc.errors(include_url=False, include_input=False)]
        raise BadRequest("the event is not valid", {"fields": problems}) from None
    known = NewExamEvent.model_fields
    parsed = {key: getattr(checked, key) if key in known else value for key, value in body.items()}
    return NewEvent(origin="callback", source_id=checked.SourceID, study_instance_uid=checked.StudyInstanceUID,
                    patient_id=checked.PatientID, event_type=checked.EventType, body=parsed, raw=raw)


def event_json(event: StoredEvent) -> bytes:
    """The event as the events API shows it, as JSONResponse would render it. Its parsed fields (`event`) are the
    stored JSON text, spliced in as is: the gateway wrote that text (NewEvent.encoded, compact like this) from a
    value it had checked, so an event costs its text here, not a Python object per value."""
    def when(seconds: float | None) -> str | None:
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")

    head = _json({
        "id": event.id,
        "receivedAt": when(event.received_at),
        "origin": event.origin,
        "sourceId": event.source_id,
        "studyInstanceUID": event.study_instance_uid,
        "eventType": event.event_type,
    })
    tail = _json({
        # The bytes as received, as text: the gateway only stores bodies that are UTF-8 (bodies.read_json_object).
        "rawBody": None if event.raw is None else event.raw.decode("utf-8"),
        "deliveries": [{**d, "nextAttemptAt": when(d["nextAttemptAt"]), "deliveredAt": when(d["deliveredAt"])}
                       for d in event.deliveries],
    })
    return b"".join((memoryview(head)[:-1], b',"event":', event.body_json.encode(), b",", memoryview(tail)[1:]))


def _json(value: Any) -> bytes:
    # As JSONResponse renders.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class Callbacks:
    def __init__(self, *, store: EventStore, worker: DeliveryWorker, subscribers: list[str],
                 authenticator: Authenticator, auth_token: str | None) -> None:
        self._store = store
        self._worker = worker
        self._subscribers = subscribers
        self._authenticator = authenticator
        self._token = auth_token.encode() if auth_token else None

    def _fixed_token(self, request: Request) -> bool:
        if self._token is None:
            return False
        offered = request.headers.get("x-callback-token", "")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if not offered and scheme.lower() == "bearer":
            offered = credentials.strip()
        return bool(offered) and hmac.compare_digest(offered.encode(), self._token)

    async def post(self, request: Request) -> Response:
        if self._fixed_token(request):
            note_actor(Actor(subject="pacs (callback token)", roles=("pacs",),
                             address=request.client.host if request.client else None))
        else:
            caller = await self._authenticator.authenticate(request)
            note_caller(caller, request)
            if Role.PACS not in caller.roles:
                raise Forbidden("the token does not grant access to this resource", {"required_roles": ["pacs"]})
        raw, payload = await read_json_object(request, max_bytes=MAX_BODY_BYTES, max_values=MAX_BODY_VALUES,
                                              what="the event", media_types=MEDIA_TYPES)
        event = parse_event(raw, payload)
        if event.patient_id is not None:  # the patient and study the PACS reports, for the audit record
            note_patient(event.patient_id)
        note_study(event.study_instance_uid)
        event_id, created = await self._store.add(event, self._subscribers)  # committed before the answer
        if created:
            self._worker.wake()
        return Response(status_code=204, headers={"X-Event-Id": str(event_id)})

    async def list_events(self, request: Request, caller: Caller) -> Response:
        params = request.query_params
        allowed = {"StudyInstanceUID", "PatientID", "since", "limit", "offset"}
        unknown = sorted(set(params.keys()) - allowed)
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]}", {"parameter": unknown[0], "allowed": sorted(allowed)})
        study = single(params, "StudyInstanceUID")
        if study is not None and not is_valid_uid(study):
            raise bad_parameter("StudyInstanceUID", "not a valid UID")
        patient = single(params, "PatientID")
        if patient is not None and not 1 <= len(patient) <= 64:
            raise bad_parameter("PatientID", "1-64 characters")
        since_s = instant_parameter(params, "since")
        limit = integer_parameter(params, "limit", 100, 1, 1000)
        offset = integer_parameter(params, "offset", 0, 0, 10_000_000)

        async def batch(size: int, after: StoredEvent | None) -> list[StoredEvent]:
            return await self._store.list_events(study_instance_uid=study, patient_id=patient, since=since_s,
                                                 limit=size, offset=offset if after is None else 0, after=after)

        # The first batch is read before the answer starts, so that a database failure is still its JSON error;
        # one on a later batch can only cut the body short (the connection is closed: the client sees no `]`).
        first = await batch(min(limit, LIST_BATCH), None)
        return StreamingResponse(_listing(first, batch, limit), media_type="application/json",
                                 headers={"Cache-Control": "private, no-store"})

    async def get(self, request: Request, caller: Caller) -> Response:
        event = await self._store.get_event(_event_id(request))
        if event is None:
            raise NotFound("no such event", {"id": request.path_params["id"]})
        return Response(event_json(event), media_type="application/json",
                        headers={"Cache-Control": "private, no-store"})

    async def redeliver(self, request: Request, caller: Caller) -> Response:
        event_id = _event_id(request)
        if not await self._store.redeliver(event_id, self._subscribers):
            raise NotFound("no such event", {"id": request.path_params["id"]})
        self._worker.wake()
        event = await self._store.get_event(event_id)
        assert event is not None
        return Response(event_json(event), status_code=202, media_type="application/json",
                        headers={"Cache-Control": "private, no-store"})


Batch = Callable[[int, StoredEvent | None], Awaitable[list[StoredEvent]]]


async def _listing(first: list[StoredEvent], batch: Batch, limit: int) -> AsyncIterator[bytes]:
    """A JSON array of up to `limit` events, `first` then `batch(size, after)` until it runs out, one event per
    chunk: the memory held is one batch of events, whatever the limit."""
    found, left, separator = first, limit, b"["
    while found:
        for event in found:
            yield separator + event_json(event)
            separator = b","
        left -= len(found)
        if left <= 0 or len(found) < LIST_BATCH:
            break
        last, found = found[-1], []  # the batch read is let go before the next one is read
        found = await batch(min(left, LIST_BATCH), last)
    yield b"]" if separator == b"," else b"[]"


def _event_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise NotFound("no such event", {"id": raw})
    return int(raw)


def routes(callbacks: Callbacks, authenticator: Authenticator) -> list[Route]:
    clinician = [Role.CLINICIAN]
    return [
        Route("/new-exam-callback", callbacks.post, methods=["POST"]),
        Route("/new-exam-callback/events", guarded(authenticator, clinician, callbacks.list_events), methods=["GET"]),
        Route("/new-exam-callback/events/{id}", guarded(authenticator, clinician, callbacks.get), methods=["GET"]),
        Route("/new-exam-callback/events/{id}/redeliver", guarded(authenticator, clinician, callbacks.redeliver),
              methods=["POST"]),
    ]
