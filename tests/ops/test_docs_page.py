"""`GET /docs`: openapi.yaml rendered by Swagger UI, served whole by the gateway, under a CSP of its own origin.

The browser test opens the page in Debian's headless Chromium (as tests/test_ohif.py does) with a proxy that
records, and refuses, every request Chromium would send anywhere but loopback: the page must render the operations
from the gateway's files alone, with no Content-Security-Policy violation on the way.
"""

from __future__ import annotations

import re
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.ops.docs_page import CONTENT_SECURITY_POLICY
from tests.conftest import AppClient, gateway_env
from tests.support.exams_support import SECRET
from tests.support.processes import GatewayProcess

CHROMIUM = shutil.which("chromium")
# tests/test_ohif.py's flags, and more of Chromium's own calls home turned off (network time, sign-in, safe
# browsing, metrics), so that the proxy below sees only what the page asks for.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900", "--disable-default-apps", "--disable-extensions", "--no-pings",
                  "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                  "--safebrowsing-disable-auto-update", "--metrics-recording-only", "--no-service-autorun",
                  "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter,"
                  "AutofillServerCommunication,CertificateTransparencyComponentUpdater,DialMediaRouteProvider"]
DEAD_PACS = "http://127.0.0.1:9/dicom-web"
# Hosts of Chromium's own services (updates, network time, accounts): the browser's, not the page's requests.
CHROMIUM_OWN = re.compile(r"^\S+ (?:https?://)?[a-z0-9.-]*\.(?:google\.com|googleapis\.com|gvt1\.com)[:/]")


# --- the page and its files, in-process -----------------------------------------------------------------------------


async def test_docs_page_and_its_files_need_no_token_and_carry_the_csp(app_client: AppClient) -> None:
    async with app_client(auth_mode="jwt", auth_jwt_secret=SECRET) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "<script>" not in page.text  # no inline script: the CSP would refuse it
        referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert set(referenced) == {"docs/swagger-ui.css", "docs/favicon-32x32.png", "docs/swagger-ui-bundle.js",
                                   "docs/docs.js"}
        media_types = {}
        for url in referenced:
            response = await client.get(f"/{url}")  # relative to /docs
            assert response.status_code == 200, url
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            media_types[url] = response.headers["content-type"].partition(";")[0]
            assert response.content
    assert media_types == {"docs/swagger-ui.css": "text/css", "docs/favicon-32x32.png": "image/png",
                           "docs/swagger-ui-bundle.js": "text/javascript", "docs/docs.js": "text/javascript"}


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2F..%2Fpyproject.toml", "x.js.map"])
async def test_docs_serves_only_the_files_the_page_uses(app_client: AppClient, name: str) -> None:
    async with app_client() as client:
        response = await client.get(f"/docs/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- the page in a browser ------------------------------------------------------------------------------------------


class RefusingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy on loopback that answers every request 403 and keeps its request line (`GET http://...`,
    `CONNECT host:443`). Chromium sends it whatever is not for loopback, which it reaches directly."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: RefusingProxy

    def handle(self) -> None:
        line = self.rfile.readline(8192).decode("latin-1").strip()
        if line:
            self.server.requests.append(line)
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.fixture
def proxy() -> Iterator[RefusingProxy]:
    server = RefusingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: run `make deps` (make test does)")
def test_docs_page_renders_the_operations_in_chromium_from_loopback_only(proxy: RefusingProxy,
                                                                         tmp_path: Path) -> None:
    assert CHROMIUM is not None
    env = gateway_env(pacs_service_url=DEAD_PACS, auth_mode="jwt", auth_jwt_secret=SECRET, log_level="info")
    with GatewayProcess(env, tmp_path / "gateway.log") as gateway:
        ran = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", f"--proxy-server={proxy.url}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--dump-dom", f"{gateway.url}/docs"],
            capture_output=True, text=True, timeout=240, check=False,
        )
        assert ran.returncode == 0, ran.stderr[-2000:]
        with httpx.Client(base_url=gateway.url) as client:
            assert client.get("/-/healthz").status_code == 200
    dom = ran.stdout

    # Swagger UI rendered the spec it fetched from the gateway: the operations, by id and by summary.
    assert 'id="operations-exams-getExamInstance"' in dom, dom[-2000:]
    assert "Download an instance, or a JPEG thumbnail of it (WADO-RS)" in dom
    assert 'id="operations-docs-getDocsPage"' in dom
    assert '"route": "/openapi.yaml", "status": 200' in (tmp_path / "gateway.log").read_text()
    # The page tried nothing off its origin: the CSP refused nothing (Chromium logs each refusal to the console).
    assert "Content Security Policy" not in ran.stderr, ran.stderr[-2000:]
    # And nothing left loopback but Chromium's own calls home, which some builds make whatever the flags say.
    page_requests = [line for line in proxy.requests if not CHROMIUM_OWN.search(line)]
    assert page_requests == [], page_requests
