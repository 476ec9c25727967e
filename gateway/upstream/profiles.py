"""What differs between upstream PACS: one profile object per upstream, chosen by `PACS_PROFILE`.

Routes never test which PACS they talk to; they ask the profile. Facts come from measurements against the real
servers (Orthanc 1.10; the quirks are listed in docs/tests.md) and from the vendors' conformance statements.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.settings import PacsProfileName

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


@dataclass(frozen=True, slots=True)
class UpsDialect:
    """What differs between UPS-RS servers (as documented; docs/api/worklist.md#dialects), for the gateway's calls."""

    name: str
    bare_uid_query: bool  # create: `?{uid}` (Microsoft) instead of `?workitem={uid}`
    array_bodies: bool  # bodies are a JSON array of one dataset
    sop_uids_in_body: bool  # create: SOPClassUID and SOPInstanceUID in the body (dcm4chee refuses them)
    needs_requester: bool  # cancel request: `?requester={AET}` is mandatory

    def create_path(self, uid: str) -> str:
        return f"workitems?{uid}" if self.bare_uid_query else f"workitems?workitem={uid}"

    def body(self, dataset: dict[str, Any]) -> bytes:
        return json.dumps([dataset] if self.array_bodies else dataset).encode()


@dataclass(frozen=True, slots=True)
class UpstreamProfile:
    name: PacsProfileName
    # Characters sent literally in query values. RFC 3986 lets a server decode percent-escapes, and standard servers
    # do; Orthanc does not decode query values at all (measured, docs/tests.md), so QIDO wildcards (`*`, `?`), PN
    # separators (`^`), lists (`,`) and date ranges (`-`) must reach it unescaped or they match nothing.
    literal_query_chars: str
    # PS3.18 §8.3.4: includefield may be repeated or comma-separated. Orthanc only understands the repeated form.
    repeat_includefield: bool
    # The upstream's UPS-RS worklist dialect, or None when it has no worklist.
    ups: UpsDialect | None
    # Orthanc answers a STOW-RS of an instance it already has with success and keeps the old copy (orthanc.md §3
    # STOW-RS); others answer 409 or warning 0111. When True the gateway looks for duplicates itself.
    silently_accepts_duplicates: bool = False
    # Orthanc cannot match a value holding a space or any character that must be percent-encoded (it does not
    # decode). Such characters are sent as the one-character wildcard `?`; the exact filter on the answer then
    # removes anything the wildcard let through.
    wildcard_unsendable: bool = False
    # Whether the upstream matches a PatientID exactly (PS3.4 §C.2.2.2.1: single value matching of LO is
    # case-sensitive). Orthanc's QIDO is case-insensitive unless "QidoCaseSensitive" is set, and the `?` sent for
    # unsendable characters widens too, so for it pages are cut by the gateway after its exact filter.
    exact_matching: bool = True
    # Orthanc: existence checks by computed resource id on its native API (`gateway.upstream.orthanc`), O(1) and exact.
    orthanc_native_ids: bool = False
    # Whether the gateway can remove an instance it stored (Orthanc: native `POST /tools/lookup` with the SOP
    # Instance UID, then `DELETE /instances/{id}`; DICOMweb has no delete). Used when the PACS
    # filed an upload under another PatientID than the gateway checked (`gateway.exams.readback`).
    deletes_instances_natively: bool = False
    # A cheap DICOMweb request that proves the upstream answers (readiness).
    readiness_path: str = "studies?limit=1"

    def exact_value(self, value: str) -> str:
        """A value to match exactly, as this upstream can receive it (see `wildcard_unsendable`)."""
        if not self.wildcard_unsendable:
            return value
        literal = _UNRESERVED.union(self.literal_query_chars)
        # A space, or an ASCII character that would need escaping, stands for one character: `?`. Orthanc drops
        # non-ASCII characters when it normalises identifiers, so a run of them may stand for none: `*`.
        out: list[str] = []
        for c in value:
            if c in literal:
                out.append(c)
            elif c.isascii():
                out.append("?")
            elif not out or out[-1] != "*":
                out.append("*")
        return "".join(out)

    def query_string(self, params: Iterable[tuple[str, str]]) -> str:
        """Encode query parameters for this upstream, keeping its literal characters unescaped."""
        pairs: list[tuple[str, str]] = []
        includefields: list[str] = []
        for key, value in params:
            if key == "includefield":
                includefields.extend(v for v in value.split(",") if v)
            else:
                pairs.append((key, value))
        if self.repeat_includefield:
            pairs.extend(("includefield", field) for field in includefields)
        elif includefields:
            pairs.append(("includefield", ",".join(includefields)))
        safe = self.literal_query_chars
        return "&".join(f"{quote(k, safe='')}={quote(v, safe=safe)}" for k, v in pairs)


PROFILES: dict[PacsProfileName, UpstreamProfile] = {
    PacsProfileName.ORTHANC: UpstreamProfile(
        name=PacsProfileName.ORTHANC,
        literal_query_chars="^*?,-.",
        repeat_includefield=True,
        ups=None,  # orthanc-dicomweb 1.7: /workitems answers 404 "Unknown resource"
        silently_accepts_duplicates=True,
        wildcard_unsendable=True,
        exact_matching=False,
        orthanc_native_ids=True,
        deletes_instances_natively=True,
    ),
    PacsProfileName.AZURE: UpstreamProfile(
        name=PacsProfileName.AZURE, literal_query_chars="-.,*", repeat_includefield=True,
        ups=UpsDialect("azure", bare_uid_query=True, array_bodies=True, sop_uids_in_body=True, needs_requester=False),
    ),
    PacsProfileName.DCM4CHEE: UpstreamProfile(
        name=PacsProfileName.DCM4CHEE, literal_query_chars="-.,*", repeat_includefield=True,
        ups=UpsDialect("dcm4chee", bare_uid_query=False, array_bodies=False, sop_uids_in_body=False,
                       needs_requester=True),
    ),
    PacsProfileName.STANDARD: UpstreamProfile(
        name=PacsProfileName.STANDARD, literal_query_chars="-.,*", repeat_includefield=True,
        ups=UpsDialect("standard", bare_uid_query=False, array_bodies=True, sop_uids_in_body=True,
                       needs_requester=False),
    ),
}


def profile_for(name: PacsProfileName) -> UpstreamProfile:
    return PROFILES[name]
