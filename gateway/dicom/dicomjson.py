"""A typed view of DICOM JSON datasets (PS3.18 Annex F) for the few attributes the gateway inspects or rewrites."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class DicomJson:
    """One DICOM JSON dataset: `{"00100020": {"vr": "LO", "Value": ["..."]}, ...}`."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    @classmethod
    def list_from(cls, payload: Any) -> list[DicomJson]:
        """The datasets of a QIDO-RS answer (a JSON array); anything else is not a valid answer."""
        if not isinstance(payload, list) or not all(isinstance(item, dict) for item in payload):
            raise ValueError("a DICOM JSON answer must be an array of objects")
        return [cls(item) for item in payload]

    def _values(self, tag: str) -> list[Any]:
        element = self.raw.get(tag)
        if not isinstance(element, dict):
            return []
        values = element.get("Value")
        return values if isinstance(values, list) else []

    def string(self, tag: str) -> str | None:
        """The first value of a string element, or None when absent or empty."""
        values = self._values(tag)
        return values[0] if values and isinstance(values[0], str) else None

    def integer(self, tag: str) -> int | None:
        values = self._values(tag)
        return values[0] if values and isinstance(values[0], int) and not isinstance(values[0], bool) else None

    def items(self, tag: str) -> Iterator[DicomJson]:
        """The items of a sequence element."""
        for item in self._values(tag):
            if isinstance(item, dict):
                yield DicomJson(item)

    def set_string(self, tag: str, vr: str, value: str) -> None:
        self.raw[tag] = {"vr": vr, "Value": [value]}

    def set_integer(self, tag: str, vr: str, value: int) -> None:
        self.raw[tag] = {"vr": vr, "Value": [value]}

    def remove(self, tag: str) -> None:
        self.raw.pop(tag, None)

    def set_sequence(self, tag: str, items: Iterable[DicomJson]) -> None:
        values = [item.raw for item in items]
        self.raw[tag] = {"vr": "SQ", "Value": values} if values else {"vr": "SQ"}
