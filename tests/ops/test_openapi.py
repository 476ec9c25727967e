"""openapi.yaml against the app: a valid OpenAPI 3.1 document that describes every route, and nothing else.

When a test here fails after adding a route: describe the route in openapi.yaml (path, method, operationId, summary,
tags, every response with an example; `security: []` if it needs no token). The failure message says what is missing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator import validate as validate_spec
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.routing import BaseRoute, Mount, Route

from gateway.app import create_app
from gateway.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO_ROOT / "openapi.yaml"
DEAD_PACS = "http://127.0.0.1:9/dicom-web"  # the discard port: nothing answers, connections are refused
JWT_SECRET = "a-test-secret-of-at-least-32-bytes-long"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Starlette writes `{name}` or `{name:convertor}`; OpenAPI only `{name}`.
_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

Operation = tuple[str, str]  # (OpenAPI path template, lower-case method)


# --- helpers --------------------------------------------------------------------------------------------------------


def load_spec() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    assert isinstance(spec, dict), f"{SPEC_PATH} is not a YAML mapping"
    return spec


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local `$ref`s (`#/components/...`) until a node that is not a reference."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert isinstance(ref, str), f"$ref must be a string, not {ref!r}"
        assert ref.startswith("#/"), f"only local references are supported, not {ref!r}"
        assert ref not in seen, f"reference cycle through {ref}"
        seen.add(ref)
        node = spec
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict), f"unresolvable reference {ref}"
            assert key in node, f"unresolvable reference {ref}"
            node = node[key]
    return node


def openapi_path(starlette_path: str) -> str:
    return _PATH_PARAM.sub(r"{\1}", starlette_path)


def without_implicit_head(methods: Iterable[str]) -> set[str]:
    """Starlette answers HEAD wherever it answers GET; that HEAD is not an operation of its own."""
    lowered = {method.lower() for method in methods}
    if "get" in lowered:
        lowered.discard("head")
    return lowered


@dataclass
class RouteTable:
    operations: set[Operation] = field(default_factory=set)
    # Mounted ASGI apps whose routes this test cannot see (a proxy, say): path prefixes.
    opaque_mounts: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def route_methods(route: Route) -> set[str] | None:
    if route.methods is not None:
        return without_implicit_head(route.methods)
    endpoint = route.endpoint
    if isinstance(endpoint, type) and issubclass(endpoint, HTTPEndpoint):
        return without_implicit_head(m for m in HTTP_METHODS if callable(getattr(endpoint, m, None)))
    return None


def collect_routes(routes: Iterable[BaseRoute], prefix: str = "", table: RouteTable | None = None) -> RouteTable:
    """Every (path, method) the app answers, recursing into mounts with their prefix."""
    table = table if table is not None else RouteTable()
    for route in routes:
        if isinstance(route, Mount):
            mount_prefix = prefix + openapi_path(route.path)
            if route.routes:
                collect_routes(route.routes, mount_prefix, table)
            else:
                table.opaque_mounts.add(mount_prefix)
        elif isinstance(route, Route):
            path = prefix + openapi_path(route.path)
            methods = route_methods(route)
            if methods is None:
                table.problems.append(f"{path}: route {route.name!r} accepts any method; give it methods=[...]")
            else:
                table.operations.update((path, method) for method in methods)
        else:
            where = prefix + str(getattr(route, "path", "?"))
            table.problems.append(f"{where}: {type(route).__name__} routes are not understood by tests/test_openapi.py")
    return table


def iter_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in (spec.get("paths") or {}).items():
        item = resolve(spec, item)
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def spec_operations(spec: dict[str, Any]) -> set[Operation]:
    by_path: dict[str, set[str]] = {}
    for path, method, _ in iter_operations(spec):
        by_path.setdefault(path, set()).add(method)
    return {(path, method) for path, methods in by_path.items() for method in without_implicit_head(methods)}


def iter_responses(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every response of every operation, and every reusable response: (where, resolved response)."""
    for path, method, operation in iter_operations(spec):
        for status, response in (operation.get("responses") or {}).items():
            yield f"{method.upper()} {path} → {status}", resolve(spec, response)
    for name, response in (spec.get("components", {}).get("responses") or {}).items():
        yield f"components/responses/{name}", resolve(spec, response)


def media_examples(spec: dict[str, Any], media: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if "example" in media:
        yield "example", media["example"]
    for name, example in (media.get("examples") or {}).items():
        example = resolve(spec, example)
        if "value" in example:
            yield f"examples/{name}", example["value"]


def schema_errors(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> list[str]:
    """Why `instance` does not match `schema` (empty when it does); `#/components/...` references resolve."""
    rooted = {**schema, "components": spec.get("components", {})}
    validator = OAS31Validator(rooted)
    return [f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            for error in validator.iter_errors(instance)]


def documented_response(operation: dict[str, Any], status: int) -> Any:
    responses = operation.get("responses") or {}
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            return responses[key]
    return None


def concrete_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "1.2.3", template)


def make_app(**overrides: Any) -> Starlette:
    return create_app(load_settings(pacs_service_url=DEAD_PACS, **overrides))


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        yield c


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return load_spec()


@pytest.fixture
def app() -> Starlette:
    return make_app(auth_mode="none")


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as c:
        yield c


# --- tests ----------------------------------------------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec.get("openapi") == "3.1.0"
    validate_spec(spec, cls=OpenAPIV31SpecValidator)


def test_routes_and_spec_agree(app: Starlette, spec: dict[str, Any]) -> None:
    table = collect_routes(app.routes)
    assert not table.problems, "cannot list the app's routes:\n  " + "\n  ".join(table.problems)

    documented = spec_operations(spec)

    def under(prefix: str, path: str) -> bool:
        return path == prefix or path.startswith(prefix.rstrip("/") + "/")

    behind_mounts = {op for op in documented if any(under(prefix, op[0]) for prefix in table.opaque_mounts)}
    undocumented = sorted(table.operations - documented)
    not_served = sorted(documented - table.operations - behind_mounts)
    empty_mounts = sorted(p for p in table.opaque_mounts if not any(under(p, path) for path, _ in documented))

    failures: list[str] = []
    if undocumented:
        failures.append("routes the app serves that openapi.yaml does not describe (add them to the spec):")
        failures.extend(f"  {method.upper()} {path}" for path, method in undocumented)
    if not_served:
        failures.append("operations openapi.yaml describes that the app does not serve (remove them or add routes):")
        failures.extend(f"  {method.upper()} {path}" for path, method in not_served)
    if empty_mounts:
        failures.append("mounted apps with no path under their prefix in openapi.yaml:")
        failures.extend(f"  {prefix}" for prefix in empty_mounts)
    assert not failures, "\n".join(failures)


async def test_served_spec_is_the_file(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].partition(";")[0].strip() == "application/yaml"
    assert response.content == SPEC_PATH.read_bytes(), (
        "GET /openapi.yaml does not serve the top-level openapi.yaml byte for byte "
        "(gateway/openapi.yaml must stay a symbolic link to ../openapi.yaml)"
    )


def test_every_operation_is_described(spec: dict[str, Any]) -> None:
    failures: list[str] = []
    operation_ids: dict[str, str] = {}
    for path, method, operation in iter_operations(spec):
        where = f"{method.upper()} {path}"
        for key in ("operationId", "summary"):
            value = operation.get(key)
            if not isinstance(value, str) or not value.strip():
                failures.append(f"{where}: no {key}")
        if not operation.get("tags"):
            failures.append(f"{where}: no tags")
        operation_id = operation.get("operationId")
        if isinstance(operation_id, str):
            if operation_id in operation_ids:
                failures.append(f"{where}: operationId {operation_id!r} is also used by {operation_ids[operation_id]}")
            operation_ids[operation_id] = where
        if not operation.get("responses"):
            failures.append(f"{where}: no responses")
    assert not failures, "\n".join(failures)


def test_every_response_has_an_example_and_a_request_id(spec: dict[str, Any]) -> None:
    failures: list[str] = []
    for where, response in iter_responses(spec):
        headers = {name.lower() for name in (response.get("headers") or {})}
        if "x-request-id" not in headers:
            failures.append(f"{where}: no X-Request-ID header (use $ref: '#/components/headers/RequestId')")
        for media_type, media in (response.get("content") or {}).items():
            if not list(media_examples(spec, media)):
                failures.append(f"{where} ({media_type}): no example or examples")
    assert not failures, "\n".join(failures)


def test_examples_match_their_schemas(spec: dict[str, Any]) -> None:
    failures: list[str] = []
    for where, response in iter_responses(spec):
        for media_type, media in (response.get("content") or {}).items():
            schema = media.get("schema")
            if schema is None:
                continue
            for name, value in media_examples(spec, media):
                failures.extend(f"{where} ({media_type}) {name}: {error}"
                                for error in schema_errors(spec, schema, value))
    for name, schema in (spec.get("components", {}).get("schemas") or {}).items():
        for index, value in enumerate(schema.get("examples") or []):
            failures.extend(f"components/schemas/{name} examples[{index}]: {error}"
                            for error in schema_errors(spec, schema, value))
    assert not failures, "\n".join(failures)


async def test_answers_are_documented(client: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    """Call every GET that needs no parameter (no token needed: AUTH_MODE=none; the PACS is down) and check that
    the status, the media type and, for JSON, the body are as documented."""
    failures: list[str] = []
    for path, method, operation in iter_operations(spec):
        parameters = [resolve(spec, p) for p in operation.get("parameters", [])]
        if method != "get" or "{" in path or any(p.get("required") for p in parameters):
            continue
        response = await client.get(path)
        where = f"GET {path} → {response.status_code}"
        if "x-request-id" not in response.headers:
            failures.append(f"{where}: no X-Request-ID header")
        documented = resolve(spec, documented_response(operation, response.status_code))
        if documented is None:
            failures.append(f"{where}: status not documented (body: {response.text[:200]})")
            continue
        content = documented.get("content") or {}
        media_type = response.headers.get("content-type", "").partition(";")[0].strip()
        if not content:
            if response.content:
                failures.append(f"{where}: documented without a body, but answered {media_type}")
            continue
        if media_type not in content:
            failures.append(f"{where}: answered {media_type}, documented {sorted(content)}")
            continue
        schema = content[media_type].get("schema")
        if schema is not None and media_type.endswith("json"):
            failures.extend(f"{where}: {error}" for error in schema_errors(spec, schema, response.json()))
    assert not failures, "\n".join(failures)


async def test_security_markings_match_the_app(spec: dict[str, Any]) -> None:
    """With JWT auth on and no token: operations that need a token answer 401, those marked `security: []` do not."""
    default_security = spec.get("security") or []
    failures: list[str] = []
    async with serve(make_app(auth_mode="jwt", auth_jwt_secret=JWT_SECRET)) as client:
        for path, method, operation in iter_operations(spec):
            public = not operation.get("security", default_security)
            response = await client.request(method.upper(), concrete_path(path))
            where = f"{method.upper()} {path} → {response.status_code}"
            if public and response.status_code == 401:
                failures.append(f"{where}: marked `security: []`, but the app wants a token")
            if not public:
                if response.status_code != 401:
                    failures.append(f"{where}: needs a token per openapi.yaml (add `security: []` if it does not)")
                elif documented_response(operation, 401) is None:
                    failures.append(f"{where}: needs a token but does not document 401")
                elif "www-authenticate" not in response.headers:
                    failures.append(f"{where}: 401 without WWW-Authenticate")
    assert not failures, "\n".join(failures)
