"""Two patients' files under one StudyInstanceUID and SeriesInstanceUID, stored in the real Orthanc around the gateway.

`SharedScene` is what a real archive can hold: the victim's instances and the other patient's, sharing the study
and series UIDs, each with greppable identifiers (PatientID, PatientName, a marker in ImageComments) so that a test
can look for any byte of one patient's data in what the other was answered.

Orthanc keeps the two patients apart (two studies, two series) and refuses study- and series-level WADO-RS for the
ambiguous UIDs. A standard PACS keeps one record per UID and serves all it holds: `MergingPacs` stands in for one,
in front of the same Orthanc, answering a study or series retrieval (and its metadata) with every instance that any
patient has under the UIDs, so that the gateway's part-by-part filter meets a mixed answer.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tests.callbacks.test_callbacks import stow_direct
from tests.support.dicom_factory import Instance, generated, new_uid
from tests.support.recorder import read_body


@dataclass(frozen=True)
class Person:
    patient_id: str
    name: str
    marker: str  # in ImageComments: appears in metadata and in the file
    instances: tuple[Instance, ...]
    multiframe: Instance

    @property
    def all(self) -> tuple[Instance, ...]:
        return (*self.instances, self.multiframe)

    def secrets(self) -> list[bytes]:
        """Bytes that identify this patient's data: its PatientID, name, marker and SOP Instance UIDs."""
        return [self.patient_id.encode(), self.name.encode(), self.marker.encode(),
                *(i.sop_uid.encode() for i in self.all)]


@dataclass(frozen=True)
class SharedScene:
    study: str
    series: str
    victim: Person
    intruder: Person


def _person(role: str, study: str, series: str) -> Person:
    tag = uuid.uuid4().hex[:10].upper()
    patient_id, name, marker = f"SHARED-{role}-{tag}", f"{role.title()}^Person{tag}", f"MARKER-{role}-{tag}"

    def make(frames: int = 1) -> Instance:
        return generated(patient_id, study_uid=study, series_uid=series, patient_name=name, frames=frames,
                         rows=32, columns=32, image_comments=marker)

    return Person(patient_id, name, marker, (make(), make()), make(frames=3))


def shared_scene(dicomweb_url: str) -> SharedScene:
    """Store two patients' files under one study and series UID, straight into Orthanc (around the gateway)."""
    study, series = new_uid(), new_uid()
    scene = SharedScene(study, series, _person("VICTIM", study, series), _person("INTRUDER", study, series))
    stow_direct(dicomweb_url, [i.data for p in (scene.victim, scene.intruder) for i in p.all])
    return scene


_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"}


@dataclass
class MergingPacs:
    """A PACS that serves every instance held under a study or series UID, whoever's it is (see the module doc)."""

    target: str  # Orthanc's root URL
    merged: list[str] = field(default_factory=list)  # the paths it answered with a merged answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        path: str = scope["raw_path"].decode("latin-1")
        query: str = scope["query_string"].decode("latin-1")
        body = await read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        async with httpx.AsyncClient(timeout=60) as client:
            parts = path.split("/")  # ["", "dicom-web", "studies", S, ("series", SE), ("metadata")]
            level = parts[3:] if parts[1:3] == ["dicom-web", "studies"] else []
            merged_level = len(level) in (1, 3) and (len(level) == 1 or level[1] == "series")
            metadata = len(level) in (2, 4) and level[-1] == "metadata" and (len(level) == 2 or level[1] == "series")
            if scope["method"] == "GET" and (merged_level or metadata):
                self.merged.append(path)
                status, out_headers, content = await self._merged(client, level, metadata)
            else:
                url = httpx.URL(self.target + path)
                if query:
                    url = url.copy_with(query=query.encode("latin-1"))
                response = await client.request(scope["method"], url, headers=headers, content=body)
                status, content = response.status_code, response.content
                out_headers = [(k.encode(), v.encode()) for k, v in response.headers.items()
                               if k.encode() not in _HOP_BY_HOP]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*out_headers, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})

    async def _merged(self, client: httpx.AsyncClient, level: list[str], metadata: bool
                      ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        study = level[0]
        series = level[2] if len(level) >= 3 else None
        search = f"{self.target}/dicom-web/studies/{study}/instances"
        params: list[tuple[str, str | int | float | bool | None]] = [("includefield", "0020000E")]
        if series:
            params.append(("SeriesInstanceUID", series))
        found: list[dict[str, Any]] = (await client.get(search, params=params)).json()
        if not found:
            return 404, [], b""
        urls = [f"{self.target}/dicom-web/studies/{study}/series/{ds['0020000E']['Value'][0]}/instances/"
                f"{ds['00080018']['Value'][0]}" for ds in found]
        if metadata:
            merged: list[Any] = []
            for url in urls:
                merged += (await client.get(f"{url}/metadata")).json()
            return 200, [(b"content-type", b"application/dicom+json")], json.dumps(merged).encode()
        boundary = f"merged-{uuid.uuid4().hex}"
        out = b""
        for url in urls:
            answer = await client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
            reader_boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
            for part in answer.content.split(f"--{reader_boundary}".encode())[1:-1]:
                out += f"--{boundary}".encode() + part
        out += f"--{boundary}--\r\n".encode()
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return 200, [(b"content-type", content_type.encode())], out
