"""The `/token` and `/dicomweb` routes. `/dicomweb` is a Mount of one route per DICOMweb resource (PS3.18 §10.4
retrieve, §10.5 store, §10.6 search), so that the metrics and the access log name the resource by its template, never
by a raw path (UIDs stay out of the labels).

Paths that no resource route takes keep the answers of the catch-all route these replaced:
- a GET lands on a fallback: empty path segments are ignored, as they always were (`/dicomweb/studies/` is a search),
  so the path without them is routed again; what still matches nothing is a 404 ("no such DICOMweb resource"), or a
  400 when the path holds an invalid UID where a study, series or instance goes;
- a POST anywhere but `/studies[/{study}]` is a 404, and `/dicomweb//studies` or `/dicomweb/studies/{study}/` store;
- any other method is a 405 whose Allow is `GET, HEAD, POST`, on every path.
The fallbacks match every path below the Mount, so Starlette's slash redirect (307) never answers there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, Router

from gateway.auth.callers import Authenticator, Role, guarded
from gateway.viewer.dicomweb import PREFIX, DicomWeb, below_prefix
from gateway.viewer.token_issuer import ViewerTokenIssuer

Endpoint = Callable[[Request], Awaitable[Response]]
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"
LEVELS = (STUDY, SERIES, INSTANCE)


def routes(dicomweb: DicomWeb, issuer: ViewerTokenIssuer, authenticator: Authenticator) -> list[BaseRoute]:
    mount = Mount(PREFIX, app=Router(dicomweb_routes(dicomweb), redirect_slashes=False))
    return [
        Route("/token", guarded(authenticator, [Role.CLINICIAN, Role.PATIENT], issuer.token), methods=["GET"]),
        # The Mount sits behind one Route that keeps the app's route table as it was (one path, GET and POST): the
        # 405's Allow header (errors._allowed_methods), openapi.yaml's `/dicomweb/{path}` and the route-table tests
        # read that table. edge.middleware.route_template names the inner route's template.
        Route(PREFIX + "/{path:path}", mount, methods=["GET", "POST"]),
    ]


def dicomweb_routes(dicomweb: DicomWeb) -> list[BaseRoute]:
    """The resource routes (paths below `/dicomweb`), then the fallbacks."""
    resources = [
        Route("/studies", partial(dicomweb.search, level="studies"), methods=["GET"]),
        Route("/series", partial(dicomweb.search, level="series"), methods=["GET"]),
        Route("/instances", partial(dicomweb.search, level="instances"), methods=["GET"]),
        Route(STUDY + "/series", partial(dicomweb.search, level="series"), methods=["GET"]),
        Route(STUDY + "/instances", partial(dicomweb.search, level="instances"), methods=["GET"]),
        Route(SERIES + "/instances", partial(dicomweb.search, level="instances"), methods=["GET"]),
        *(Route(level, dicomweb.retrieve, methods=["GET"]) for level in LEVELS),
        *(Route(level + "/metadata", dicomweb.metadata, methods=["GET"]) for level in LEVELS),
        *(Route(level + "/rendered", dicomweb.rendered, methods=["GET"]) for level in LEVELS),
        *(Route(level + "/thumbnail", dicomweb.thumbnail, methods=["GET"]) for level in LEVELS),
        Route(INSTANCE + "/frames/{frames}", dicomweb.frames, methods=["GET"]),
        Route(INSTANCE + "/frames/{frames}/rendered", dicomweb.rendered, methods=["GET"]),
        Route(INSTANCE + "/bulk/{attribute:path}", dicomweb.bulk, methods=["GET"]),
        Route("/studies", dicomweb.store, methods=["POST"]),
        Route(STUDY, dicomweb.store, methods=["POST"]),
    ]
    return [*resources, *_Fallback(resources, dicomweb).routes]


class _Fallback:
    """What no resource route takes: a GET routed again without empty segments, else 404; a POST as STOW-RS did."""

    # Most specific first, so that the UIDs a fallback captures are checked (400) before the 404.
    PATHS = (INSTANCE + "/{rest:path}", SERIES + "/{rest:path}", STUDY + "/{rest:path}", "/{path:path}")

    def __init__(self, resources: list[Route], dicomweb: DicomWeb) -> None:
        self._resources = resources
        self._dicomweb = dicomweb
        self.routes = [Route(path, self.answer, methods=["GET", "POST"]) for path in self.PATHS]

    async def answer(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._dicomweb.store_elsewhere(request)
        segments = [segment for segment in below_prefix(request).split("/") if segment]
        path = request.scope.get("root_path", "") + "/" + "/".join(segments)
        scope = {**request.scope, "path": path, "path_params": {}}
        # The request keeps its path as sent (error details show it); only the path parameters are the new match's.
        for route in self._resources:
            match, child = route.matches(scope)
            if match is Match.FULL:
                answer: Response = await route.endpoint(Request({**request.scope, **child}, request.receive))
                return answer
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return await self._dicomweb.nowhere(Request({**request.scope, **child}, request.receive))
        return await self._dicomweb.nowhere(request)  # not reached: "/{path:path}" matches every path
