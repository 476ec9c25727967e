"""What `/dicomweb` sends back: Accept negotiation, streams relayed from the PACS, and JSON pointed at the gateway.

Retrieval streams from the PACS; the gateway picks the Accept header the PACS can serve (Orthanc refuses lists,
`image/*` and single-part `application/dicom`) and unwraps a single instance when the client asked for one. URLs in
JSON answers (RetrieveURL, BulkDataURI) point at the gateway, as the caller reaches it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.dicom.dicomjson import DicomJson
from gateway.dicom.media import DICOM_JSON, MULTIPART_DICOM_AS_STORED
from gateway.dicom.tags import RETRIEVE_URL
from gateway.edge.accept import MAX_ACCEPT_BYTES, AcceptTooLong, MediaType, acceptable, ranges
from gateway.edge.multipart import PartReader, boundary_of
from gateway.errors import BadRequest, NotAcceptable, NotFound, UpstreamFailed
from gateway.exams.routes import PRIVATE, UpstreamRelay, reading_multipart
from gateway.upstream.client import UpstreamClient, UpstreamStream
from gateway.viewer.access import Access
from gateway.viewer.scoped_parts import ScopedParts

_FRAME_TYPES = ("application/octet-stream", "image/jls", "image/jp2")  # what Orthanc 1.10 serves frames as
# What each kind of resource can be sent as (PS3.18 §8.7.3, as far as the gateway and Orthanc deliver it).
_DICOM_PARTS = MediaType("multipart", "related", "application/dicom")
OFFERS: dict[str, tuple[MediaType, ...]] = {
    "metadata": (MediaType("application", "dicom+json"), MediaType("application", "json")),
    "retrieve": (_DICOM_PARTS,),
    "rendered": (MediaType("image", "jpeg"), MediaType("image", "png")),
    "thumbnail": (MediaType("image", "jpeg"), MediaType("image", "png")),
    "frames": tuple(MediaType("multipart", "related", part) for part in _FRAME_TYPES),
    "bulk": (MediaType("multipart", "related", "application/octet-stream"),),
}
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def offers(kind: str, *, instance: bool) -> tuple[MediaType, ...]:
    """An instance is also sent as one `application/dicom` body (unwrapped from the PACS's multipart)."""
    if instance and kind == "retrieve":
        return (*OFFERS[kind], MediaType("application", "dicom"))
    return OFFERS[kind]


def negotiate(request: Request, offered: tuple[MediaType, ...]) -> None:
    accept = request.headers.get("accept")
    try:
        satisfied = acceptable(accept, offered)
    except AcceptTooLong as exc:
        raise BadRequest(str(exc), {"header": "Accept", "max_length": MAX_ACCEPT_BYTES}) from None
    if not satisfied:
        raise NotAcceptable("no representation of this resource satisfies the Accept header",
                            {"accept": (accept or "")[:256], "available": [str(media) for media in offered]})


def wants_single_part(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/dicom" in accept and "multipart/related" not in accept


def multipart_accept(request: Request, default: str) -> str:
    """The client's Accept when it is one multipart/related value of a type the PACS serves; the default otherwise
    (for `type="*/*"`, lists, or none)."""
    accept = request.headers.get("accept", "")
    asked = ranges(accept)  # already bounded by negotiate
    if len(asked) == 1 and (asked[0].type, asked[0].subtype) == ("multipart", "related") \
            and asked[0].params.get("type") in _FRAME_TYPES:
        return accept.strip()
    return default


def datasets(found: list[Any]) -> Response:
    return JSONResponse(found, headers=PRIVATE, media_type=DICOM_JSON)


class Links:
    """The gateway's `/dicomweb` as a caller reaches it, and JSON whose URLs point there instead of at the PACS."""

    def __init__(self, *, public_base_url: str, trusted_proxies: frozenset[str]) -> None:
        self._public = public_base_url.rstrip("/") + "/dicomweb"
        self._trusted_proxies = trusted_proxies

    def base_for(self, request: Request) -> str:
        """PUBLIC_BASE_URL, or what a trusted proxy says (`Forwarded: proto=..;host=..`, else `X-Forwarded-Proto`
        and `X-Forwarded-Host`)."""
        client = request.client.host if request.client else None
        if client is None or client not in self._trusted_proxies:
            return self._public
        proto = host = None
        forwarded = request.headers.get("forwarded")
        if forwarded:
            first = forwarded.split(",")[0]
            pairs = dict(p.strip().split("=", 1) for p in first.split(";") if "=" in p)
            proto, host = pairs.get("proto", "").strip('"'), pairs.get("host", "").strip('"')
        else:
            proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
            host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if proto not in ("http", "https") or not host or not _HOST.fullmatch(host):
            return self._public
        return f"{proto}://{host}/dicomweb"

    def rewrite(self, value: Any, base: str) -> Any:
        """RetrieveURL and BulkDataURI values point at the gateway's `/dicomweb` (the PACS writes its own)."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key == "BulkDataURI" and isinstance(item, str):
                    out[key] = _public_url(base, item)
                elif key == RETRIEVE_URL and isinstance(item, dict):
                    out[key] = {**item, "Value": [_public_url(base, v) if isinstance(v, str) else v
                                                  for v in item.get("Value", [])]}
                else:
                    out[key] = self.rewrite(item, base)
            return out
        if isinstance(value, list):
            return [self.rewrite(item, base) for item in value]
        return value


def _public_url(base: str, url: str) -> str:
    at = url.find("/studies/")
    return base + url[at:] if at >= 0 else url


class Relay:
    """WADO-RS from the PACS to the caller: metadata filtered to the caller's scope, bytes streamed through."""

    def __init__(self, *, upstream: UpstreamClient, public_base_url: str) -> None:
        self._upstream = upstream
        public = urlsplit(public_base_url)
        self._forwarded = f"host={public.netloc};proto={public.scheme}"

    async def metadata(self, path: str, access: Access) -> list[DicomJson]:
        """WADO-RS metadata: only the caller's datasets (404 when none is)."""
        answer = await self._upstream.request("GET", path, operation="dicomweb_metadata",
                                              headers={"Accept": DICOM_JSON, "Forwarded": self._forwarded})
        if answer.status_code in (400, 404):
            raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
        if answer.status_code != 200:
            raise UpstreamFailed("the PACS refused the metadata", {"upstream_status": answer.status_code})
        try:
            found = DicomJson.list_from(answer.json())
        except ValueError:
            raise UpstreamFailed("the PACS answered the metadata with something other than DICOM JSON") from None
        kept = [ds for ds in found if access.holds(ds)]
        if not kept:  # every dataset was another patient's: as if nothing were there
            raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
        return kept

    async def relay(self, path: str, operation: str, accept: str, params: list[tuple[str, str]], *,
                    extra: dict[str, str] | None = None) -> Response:
        upstream = await self._upstream.open_stream("GET", path, operation=operation, params=params,
                                                    headers={"Accept": accept, "Forwarded": self._forwarded})
        await _expect(upstream, path)
        return _relayed(upstream, extra)

    async def retrieve(self, path: str, access: Access, *, single: bool) -> Response:
        """WADO-RS of a study, series or instance; for a scoped caller only the parts that are its patient's files.
        `single`: the client asked for one `application/dicom` body (Orthanc only sends multipart: it is unwrapped)."""
        headers = {"Accept": MULTIPART_DICOM_AS_STORED, "Forwarded": self._forwarded}
        upstream = await self._upstream.open_stream("GET", path, operation="dicomweb_retrieve", headers=headers)
        await _expect(upstream, path)
        if access.patient is None and not single:
            return _relayed(upstream)
        async with reading_multipart(upstream):
            content_type = upstream.headers.get("Content-Type", "")
            boundary = boundary_of(content_type)
            reader = PartReader(upstream.iter_raw(), boundary)
            body: AsyncIterator[bytes]
            if access.patient is None:
                found, body = await reader.next_part(), reader.body()
            else:
                parts = ScopedParts(reader, boundary, access.patient)
                found, body = await parts.first(), parts.body()
                if single and found:
                    body = parts.first_body()
        if not found:
            await upstream.aclose()
            raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
        headers = {**PRIVATE}
        if single:
            if reader.length is not None:
                headers["Content-Length"] = str(reader.length)
            return UpstreamRelay([], body, upstream, media_type="application/dicom", headers=headers)
        return UpstreamRelay([], body, upstream, media_type=content_type, headers=headers)


def _relayed(upstream: UpstreamStream, extra: dict[str, str] | None = None) -> Response:
    headers = {**PRIVATE, **(extra or {})}
    length = upstream.headers.get("Content-Length")
    if length is not None:
        headers["Content-Length"] = length
    return UpstreamRelay([], upstream.iter_raw(), upstream,
                         media_type=upstream.headers.get("Content-Type", "application/octet-stream"),
                         headers=headers)


async def _expect(upstream: UpstreamStream, path: str) -> None:
    if upstream.status_code == 200:
        return
    status = upstream.status_code
    await upstream.aclose()
    if status in (400, 404):
        raise NotFound("no such resource", {"path": f"/dicomweb/{path}"})
    if status == 406:
        raise NotAcceptable("the PACS cannot produce this representation", {"path": f"/dicomweb/{path}"})
    raise UpstreamFailed("the PACS failed", {"upstream_status": status})
