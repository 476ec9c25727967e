"""The examples held in `tests.contract.page` are the page's, character for character (when the page is here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.contract.page import EXAMPLES

PAGE = Path(__file__).resolve().parents[3] / "shared" / "contracts" / "mia-dicom-service-api.md"
_DETAILS = re.compile(r"<details>\s*<summary>(?P<summary>[^<]+)</summary>(?P<body>.*?)</details>", re.DOTALL)
_BLOCK = re.compile(r"```(?P<lang>bash|json)\n(?P<text>.*?)\n```", re.DOTALL)


def page_examples() -> dict[str, dict[str, str]]:
    """Each `<details>` example of the page: its summary → {"bash": request, "json": response}."""
    text = PAGE.read_text(encoding="utf-8")
    return {match["summary"].strip(): {block["lang"]: block["text"] for block in _BLOCK.finditer(match["body"])}
            for match in _DETAILS.finditer(text)}


@pytest.mark.skipif(not PAGE.exists(), reason="the contract page lives outside the repository (shared/contracts/)")
def test_the_held_examples_are_the_pages() -> None:
    on_page = page_examples()
    assert sorted(on_page) == sorted(example.summary for example in EXAMPLES)
    for example in EXAMPLES:
        blocks = on_page[example.summary]
        assert blocks["bash"] == example.request, example.summary
        assert blocks.get("json") == example.response, example.summary
