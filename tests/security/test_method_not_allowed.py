"""405 answers (issue 10, class 9): `Allow` names every method the path has, whichever route object holds it."""

from __future__ import annotations

import re
from collections import defaultdict

import httpx
import pytest
from starlette.routing import Route

from gateway.app import create_app
from tests.conftest import AppClient, make_settings

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")


def methods_by_path() -> dict[str, set[str]]:
    """The route table of the real app: each path with the union of its routes' methods."""
    table: dict[str, set[str]] = defaultdict(set)
    for route in create_app(make_settings()).routes:
        assert isinstance(route, Route)
        table[route.path] |= route.methods or set()
    return dict(table)


def example(path: str) -> str:
    """A concrete URL for a path template: every parameter becomes a plausible UID or id."""
    return re.sub(r"\{[^}]+\}", "1.2.3", path.replace("{path:path}", "studies"))


def allowed(answer: httpx.Response) -> set[str]:
    return {method.strip() for method in answer.headers["allow"].split(",")}


def assert_405(answer: httpx.Response, method: str, path: str) -> None:
    assert answer.status_code == 405, (method, path, answer.status_code)
    if method == "HEAD":
        assert answer.content == b""  # the same head as GET would have, no body (RFC 9110 §9.3.2)
        return
    error = answer.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert error["details"] == {"path": path, "method": method}


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("PUT", "/dicomweb/studies", {"GET", "HEAD", "POST"}),
    ("DELETE", "/dicomweb/studies/1.2.3/series", {"GET", "HEAD", "POST"}),
    ("DELETE", "/exams/studies", {"GET", "HEAD"}),
    ("POST", "/uid", {"GET", "HEAD"}),
    ("PUT", "/workitems", {"GET", "HEAD", "POST"}),
    ("GET", "/new-exam-callback", {"POST"}),
])
async def test_a_405_names_every_method_of_the_path(app_client: AppClient, method: str, path: str,
                                                    expected: set[str]) -> None:
    async with app_client() as client:
        answer = await client.request(method, path)
        assert_405(answer, method, path)
        assert allowed(answer) == expected


async def test_every_route_of_the_table_answers_405_with_its_paths_methods(app_client: AppClient) -> None:
    table = methods_by_path()
    async with app_client() as client:
        for template, methods in table.items():
            path = example(template)
            for method in METHODS:
                if method in methods:
                    continue
                answer = await client.request(method, path)
                assert_405(answer, method, path)
                assert allowed(answer) == methods, (method, template)
