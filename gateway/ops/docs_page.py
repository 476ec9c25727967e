"""`GET /docs`: openapi.yaml as a page for people (Swagger UI), every file of it served by the gateway itself.

Swagger UI's static build comes from the swagger-ui-bundle-v2 package (Apache-2.0), so the page loads nothing from
a CDN. The Content-Security-Policy lets the page load and call only its own origin: scripts, styles, the spec and
"Try it out" requests all come from 'self' (images also from `data:`, the icons inlined in swagger-ui.css).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from swagger_ui_bundle import swagger_ui_path

from gateway.errors import NotFound

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'self'"
)
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

# URLs are relative to /docs, so the page also works behind a proxy that adds a path prefix.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dicom-gateway API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/docs.js"></script>
</body>
</html>
"""

# In a file of its own: the CSP allows no inline script.
INITIALIZER = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.yaml",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // Swagger UI's default posts the spec to validator.swagger.io for a badge; the CSP would block it anyway.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

# The only files of the bundle the page uses, with their media types; nothing else under the package is reachable.
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript", "favicon-32x32.png": "image/png"}


def routes() -> list[Route]:
    directory = Path(str(swagger_ui_path))
    files = {name: directory / name for name in ASSETS}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:  # a changed package layout fails at start-up, not as a blank page
        raise RuntimeError(f"Swagger UI files missing from swagger-ui-bundle-v2: {', '.join(missing)}")

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE, headers=SECURITY_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name == "docs.js":
            return Response(INITIALIZER, media_type="text/javascript", headers=SECURITY_HEADERS)
        if name not in files:
            raise NotFound(f"no such file of the docs page: {name}")
        return FileResponse(files[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)

    return [Route("/docs", page, methods=["GET"]), Route("/docs/{asset}", asset, methods=["GET"])]
