"""The benchmark's peer (`tests/support/nginx.py`): nginx in front of Orthanc passes the bench's three kinds of
request through unchanged, streams rather than spools, and answers what Orthanc answers."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from tests.support.dicom_factory import generated, new_uid
from tests.support.nginx import Nginx
from tests.support.orthanc import Orthanc


def related(files: list[bytes], boundary: str) -> bytes:
    parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n" for f in files]
    return b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"


def test_nginx_relays_stow_qido_and_wado_as_orthanc_answers_them(tmp_path: Path, orthanc: Orthanc) -> None:
    patient = f"NGINX{secrets.token_hex(4).upper()}"
    study, series = new_uid(), new_uid()
    files = [generated(patient, study_uid=study, series_uid=series, rows=64, columns=64) for _ in range(3)]
    boundary = f"b{secrets.token_hex(8)}"
    with Nginx(tmp_path / "nginx", orthanc.url) as proxy, httpx.Client(timeout=30) as client:
        stored = client.post(f"{proxy.url}/dicom-web/studies", content=related([f.data for f in files], boundary),
                             headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                      f"boundary={boundary}", "Accept": "application/dicom+json"})
        assert stored.status_code == 200, stored.text
        assert len(stored.json()["00081199"]["Value"]) == 3
        via = client.get(f"{proxy.url}/dicom-web/studies?PatientID={patient}")
        direct = client.get(f"{orthanc.url}/dicom-web/studies?PatientID={patient}")
        assert via.status_code == direct.status_code == 200
        # The same answer, but for the RetrieveURL, which Orthanc builds from the Host the client used.
        retrieve = "00081190"
        assert via.json()[0].pop(retrieve)["Value"][0].startswith(f"{proxy.url}/dicom-web/studies/")
        assert direct.json()[0].pop(retrieve)["Value"][0].startswith(f"{orthanc.url}/dicom-web/studies/")
        assert [{k: v for k, v in d.items() if k != retrieve} for d in via.json()] == \
            [{k: v for k, v in d.items() if k != retrieve} for d in direct.json()]
        assert len(via.json()) == 1
        instance = f"/dicom-web/studies/{study}/series/{series}/instances/{files[0].sop_uid}"
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        via_wado = client.get(proxy.url + instance, headers=accept)
        direct_wado = client.get(orthanc.url + instance, headers=accept)
        assert via_wado.status_code == 200
        assert files[0].data in via_wado.content
        assert len(via_wado.content) == len(direct_wado.content)
        pids = proxy.pids()
        assert len(pids) == 2  # the master and its one worker: whose CPU the bench counts
    # One access line per request, written out at the graceful stop.
    assert len(proxy.access_lines()) == 3  # the STOW, the search and the retrieval
    config = proxy.config()
    assert "proxy_buffering off;" in config
    assert "proxy_request_buffering off;" in config
