"""OHIF, a real web viewer, opens a study through the gateway's /dicomweb with a viewer token, in headless Chromium.

The viewer is OHIF's published static build (@ohif/app from the npm registry, fetched and checked by
deploy/dev/install-ohif.sh into .cache/ohif/dist), served on loopback with an app-config.js whose DICOMweb data
source is the gateway. OHIF reads `?token=` from the viewer URL and sends it as `Authorization: Bearer` on every
DICOMweb request. Chromium is Debian's (installed by deploy/dev/install-deps.sh).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tests.callbacks.test_callbacks import stow_direct
from tests.conftest import REPO_ROOT, gateway_env
from tests.support.dicom_factory import generated, new_uid
from tests.support.exams_support import SECRET, token
from tests.support.orthanc import free_port
from tests.support.processes import GatewayProcess
from tests.support.servers import ThreadedServer

OHIF_DIST = REPO_ROOT / ".cache" / "ohif" / "dist"
CHROMIUM = shutil.which("chromium")
# The flags Debian's Chromium needs here: no sandbox as root, no GPU, and no calls home (the network is closed).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]
APP_CONFIG = """window.config = {
  routerBasename: null, extensions: [], modes: [], showStudyList: true, maxNumberOfWebWorkers: 1,
  showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false, showLoadingIndicator: true,
  defaultDataSourceName: 'gateway',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'gateway',
    configuration: {
      friendlyName: 'dicom-gateway', name: 'gateway',
      wadoUriRoot: '%(root)s', qidoRoot: '%(root)s', wadoRoot: '%(root)s',
      qidoSupportsIncludeField: true, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: false, staticWado: false,
      singlepart: 'bulkdata,video', bulkDataURI: { enabled: true }, omitQuotationForMultipartRequest: true,
    },
  }],
};
"""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not (OHIF_DIST / "index.html").is_file(),
    reason="needs Debian's chromium and OHIF's static build: run `make deps` (make test does)",
)


def ohif_site(root: str) -> Starlette:
    """OHIF's files, our app-config.js, and index.html for the app's own routes (/viewer, ...)."""
    config = APP_CONFIG % {"root": root}

    async def page(request: Request) -> Response:
        path = request.path_params["path"]
        if path == "app-config.js":
            return Response(config, media_type="application/javascript")
        file = (OHIF_DIST / path).resolve()
        if path and file.is_file() and OHIF_DIST.resolve() in file.parents:
            return FileResponse(file)
        return FileResponse(OHIF_DIST / "index.html")

    return Starlette(routes=[Route("/{path:path}", page)])


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", *args],
                          capture_output=True, text=True, timeout=240, check=False)


def viewport_row(url: str, tmp_path: Path) -> list[int]:
    """The grey levels along the middle row of OHIF's viewport, one every 10 pixels.

    Chromium takes the screenshot when its virtual-time budget runs out, whether or not the viewer has drawn by then;
    on a loaded machine (the whole suite on 2 cores) the first budget can end before the pixels have arrived. A
    screenshot whose row is still one flat colour is taken again with a longer budget, three times at most. A viewer
    that never draws fails all three.
    """
    row: list[int] = []
    for attempt, budget in enumerate((30_000, 60_000, 120_000)):
        shot = tmp_path / f"viewer-{attempt}.png"
        ran = chromium(f"--virtual-time-budget={budget}", f"--screenshot={shot}", url,
                       user_dir=tmp_path / f"shot-{attempt}")
        assert ran.returncode == 0, ran.stderr[-2000:]
        shutil.copy(shot, REPO_ROOT / ".cache" / "ohif-viewer.png")  # kept for a look after the run (git-ignored)
        image = Image.open(shot).convert("L")
        row = [int(value) for value in image.crop((420, 450, 1110, 451)).tobytes()][::10]  # mode L: a byte a pixel
        if len(set(row)) > 1:
            return row
    return row


@pytest.fixture
def site() -> Iterator[ThreadedServer]:
    gateway_port = free_port()
    server = ThreadedServer(ohif_site(f"http://127.0.0.1:{gateway_port}/dicomweb"))
    server.start()
    server.gateway_port = gateway_port  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def test_ohif_shows_the_tokens_study_and_lists_no_other(orthanc_url: str, site: ThreadedServer,
                                                         tmp_path: Path) -> None:
    patient = f"OHIF-{new_uid()[-8:]}"
    study_a, study_b = new_uid(), new_uid()
    first = generated(patient, study_uid=study_a, rows=256, columns=256, description="OHIF first study",
                      patient_name="OHIF^Tester")
    second = generated(patient, study_uid=study_b, description="OHIF second study", patient_name="OHIF^Tester")
    stow_direct(orthanc_url, [first.data, second.data])
    port = site.gateway_port  # type: ignore[attr-defined]
    env = gateway_env(pacs_service_url=orthanc_url, pacs_profile="orthanc", auth_mode="jwt", auth_jwt_secret=SECRET,
                      viewer_token_secret="ohif-viewer-token-secret-0123456789", cors_allow_origins=site.url,
                      public_base_url=f"http://127.0.0.1:{port}", log_level="info")
    gateway = GatewayProcess(env, tmp_path / "gateway.log", port=port)
    gateway.start()
    try:
        viewer = httpx.get(f"{gateway.url}/token", params={"studyUID": study_a},
                           headers={"Authorization": f"Bearer {token('clinician')}"}).json()["token"]
        url = f"{site.url}/viewer?StudyInstanceUIDs={study_a}&token={viewer}"
        row = viewport_row(url, tmp_path)
        dom = chromium("--virtual-time-budget=30000", "--dump-dom", url, user_dir=tmp_path / "dom").stdout
    finally:
        gateway.stop()

    # The study browser lists the patient's studies as the gateway answers them: only the token's.
    assert "OHIF first study" in dom
    assert "OHIF second study" not in dom
    # The viewport shows the image: the test file is a left-to-right gradient, so the middle row of the viewport
    # rises from dark to bright across many grey levels.
    assert len(set(row)) > 30, row
    assert row[-1] - row[0] > 150, row
    assert all(b >= a - 2 for a, b in itertools.pairwise(row)), row
    log = (tmp_path / "gateway.log").read_text()
    # The browser's requests went through us, each labelled by its DICOMweb resource (the study list's search, too).
    assert '"route": "/dicomweb/studies", "status": 200' in log
