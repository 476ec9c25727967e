"""`GET /openapi.yaml`: the API description, served as written (the file at the repository's top level)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def openapi_text() -> bytes:
    # gateway/openapi.yaml is a link to the top-level openapi.yaml, so the package carries it when installed.
    return resources.files("gateway").joinpath("openapi.yaml").read_bytes()


def routes() -> list[Route]:
    spec = openapi_text()

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type="application/yaml")

    return [Route("/openapi.yaml", openapi, methods=["GET"])]
