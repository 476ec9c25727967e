"""DICOM value types the gateway parses at its edge: UIDs and UID roots (PS3.5 §9.1, §B.2)."""

from __future__ import annotations

import re
import secrets
import uuid

UID_MAX_LENGTH = 64  # PS3.5 §9.1: a UID is at most 64 characters
# PS3.5 §9.1: components of digits separated by '.', no leading zero in a component except the component "0".
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
# Room left for the random suffix under an organisation root. 24 decimal digits are ~79 random bits: a collision
# among a billion UIDs has a probability of about 4e-7, with no registry shared between processes.
MIN_RANDOM_DIGITS = 24
UUID_ROOT = "2.25"  # PS3.5 §B.2: UIDs derived from a UUID (ISO/IEC 9834-8)


class UidRootError(ValueError):
    """A UID root that cannot produce valid, unique UIDs."""


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid UID (PS3.5 §9.1): 1-64 chars, digits and dots, no leading zeros."""
    return 0 < len(value) <= UID_MAX_LENGTH and _UID_RE.fullmatch(value) is not None


def validate_uid_root(root: str) -> str:
    """Return the root when UIDs generated under it are valid and unique; raise `UidRootError` otherwise."""
    root = root.strip()
    if not root:
        raise UidRootError("the UID root is empty")
    if _UID_RE.fullmatch(root) is None:
        raise UidRootError(
            f"{root!r} is not a valid UID root: digits separated by dots, no empty component, "
            "no leading zero in a component (PS3.5 §9.1)"
        )
    if root == UUID_ROOT:
        return root
    room = UID_MAX_LENGTH - len(root) - 1
    if room < MIN_RANDOM_DIGITS:
        longest = UID_MAX_LENGTH - 1 - MIN_RANDOM_DIGITS
        raise UidRootError(
            f"the UID root is {len(root)} characters long; it leaves {max(room, 0)} digits for unique suffixes, "
            f"at least {MIN_RANDOM_DIGITS} are needed (use a root of at most {longest} characters, or 2.25)"
        )
    return root


class UidGenerator:
    """New UIDs under one root, unique across calls and processes without coordination.

    Under `2.25` the suffix is a random UUID's 128-bit integer (PS3.5 §B.2). Under an organisation root the suffix
    is a random integer of as many digits as fit in 64 characters (at least `MIN_RANDOM_DIGITS`), with a non-zero
    first digit so that the component has no leading zero.
    """

    def __init__(self, root: str) -> None:
        self.root = validate_uid_root(root)
        self._digits = UID_MAX_LENGTH - len(self.root) - 1

    def new(self) -> str:
        if self.root == UUID_ROOT:
            return f"{UUID_ROOT}.{uuid.uuid4().int}"
        low = 10 ** (self._digits - 1)
        suffix = low + secrets.randbelow(9 * low)  # exactly `_digits` digits, first one 1-9
        return f"{self.root}.{suffix}"
