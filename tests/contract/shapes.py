"""The shape of a DICOM JSON answer (PS3.18 Annex F): which tags, with which VR, nested how. Values are not shape."""

from __future__ import annotations

from typing import Any

Shape = dict[str, tuple[str, tuple["Shape", ...]]]  # tag -> (VR, the shapes of a sequence's items)


def shape(dataset: dict[str, Any]) -> Shape:
    out: Shape = {}
    for tag, element in dataset.items():
        assert isinstance(element, dict), f"{tag}: not a DICOM JSON element"
        assert isinstance(element.get("vr"), str), f"{tag}: an element without a VR"
        items: tuple[Shape, ...] = ()
        if element["vr"] == "SQ":
            items = tuple(shape(item) for item in element.get("Value", []))
        out[tag.upper()] = (element["vr"], items)
    return out


def missing(expected: Shape, actual: Shape, where: str = "") -> list[str]:
    """What of `expected` is not in `actual`: absent tags, other VRs, other nesting (extra tags are not reported)."""
    problems: list[str] = []
    for tag, (vr, items) in expected.items():
        path = f"{where}{tag}"
        if tag not in actual:
            problems.append(f"{path} ({vr}) is missing")
            continue
        actual_vr, actual_items = actual[tag]
        if actual_vr != vr:
            problems.append(f"{path} is {actual_vr}, the page has {vr}")
            continue
        if items and len(actual_items) != len(items):
            problems.append(f"{path} has {len(actual_items)} items, the page has {len(items)}")
            continue
        for index, (item, actual_item) in enumerate(zip(items, actual_items, strict=False)):
            problems += missing(item, actual_item, f"{path}[{index}].")
    return problems


def extra(expected: Shape, actual: Shape, where: str = "") -> list[str]:
    """Tags in `actual` that the page's example does not have (at any depth it describes)."""
    found: list[str] = []
    for tag, (_, actual_items) in actual.items():
        if tag not in expected:
            found.append(f"{where}{tag}")
            continue
        for index, (item, actual_item) in enumerate(zip(expected[tag][1], actual_items, strict=False)):
            found += extra(item, actual_item, f"{where}{tag}[{index}].")
    return found
