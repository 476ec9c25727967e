"""Fuzz of the PatientID bytes of uploads against the real Orthanc: whatever the gateway accepts, Orthanc files under
exactly the ID the gateway checked; whatever it refuses is 422 naming PatientID, with nothing stored.

Seeded random values built from the pieces that split readers (character sets, escapes, controls, NUL, padding,
VRs), plus the fixed corpus of test_patient_id_bytes. The test's own expectation of a reading is deliberately
naive, Python's codec for the declared character set (not the gateway's rule): a patient token carries it, so an
upload the gateway accepts under a patient token was read exactly so by the gateway. A quarter of the files go up
with a clinician token; then the ID the gateway read is the one its answer links to (the study RetrieveURL).
"""

from __future__ import annotations

import random
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.security.crafted import crafted, filed_under, upload_files
from tests.security.test_patient_id_bytes import ACCEPTED, REFUSED, _victim_variants
from tests.support.exams_support import clinician, gateway, patient
from tests.support.orthanc import Orthanc

SEED = 20261201
RANDOM_FILES = 300
CHARSETS: dict[str | None, str] = {  # declared set -> Python's codec: the naive expectation of a reading
    None: "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3",
    "ISO_IR 144": "iso8859_5", "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8", "ISO_IR 166": "tis_620",
    "ISO_IR 192": "utf-8", "ISO_IR 13": "shift_jis", "ISO_IR 203": "iso8859_15", "GB18030": "gb18030", "GBK": "gbk",
    "ISO 2022 IR 6": "ascii", "ISO 2022 IR 13": "shift_jis", "ISO 2022 IR 100": "latin_1",
    "ISO 2022 IR 6\\ISO 2022 IR 87": "iso2022_jp", "\\ISO 2022 IR 149": "euc_kr", "BOGUS": "ascii",
}
NASTY = [b" ", b"  ", b"\x00", b"\x1b(B", b"\x1b$B", b"\x1b-A", b"\x1b(J", b"\t", b"\r\n", b"\x7f", b"\x85", b"\xa0",
         b"\xad", b"\xe9", b"\xc3\xa9", b"\xc3", b"\xff", b"\xc0\x80", b"\xe2\x80\x8b", b"\xef\xbb\xbf", b"\xd0",
         b"\xe1", b"\xb1", b"\xa5", b"\xa4", b"\\", b"*", b"?", b",", b"~", b"\x81\x30", b"\xa1\xa1", b"\xb0\xa1"]
VRS = [b"LO"] * 8 + [b"SH", b"UN", b"UT", b"PN", b"OB", b"CS", b"UC"]


def _random_value(rng: random.Random) -> bytes:
    base = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-._") for _ in range(rng.randint(1, 14))).encode()
    if rng.random() < 0.5:
        return base + b" " * (len(base) % 2)  # a well-formed value: the one pad space when its length is odd
    parts = [base]
    for _ in range(rng.randint(1, 3)):
        parts.insert(rng.randint(0, len(parts)), rng.choice(NASTY))
    value = b"".join(parts)
    if rng.random() < 0.1:
        value = value * rng.randint(2, 8)  # past 64 characters now and then
    padding = rng.choice([b"", b"", b" ", b"\x00"])
    return value + padding if (len(value) + len(padding)) % 2 == 0 or rng.random() < 0.2 else value + b" "


def _expected_reading(value: bytes, vr: bytes, charset: str | None, implicit: bool) -> str | None:
    """The naive reading: the declared set's codec on the bytes, less one pad space; None when it cannot decode."""
    raw = value[:-1] if value.endswith(b" ") and len(value) % 2 == 0 else value
    try:
        return raw.decode(CHARSETS[charset])
    except (UnicodeDecodeError, LookupError):
        return None


def _claim(reading: str | None) -> str:
    """A patient claim carrying the reading, when a token can carry it (1-64 printable characters, no surrounding
    space, no matching characters); otherwise one that cannot match."""
    if (not reading or len(reading) > 64 or not reading.isprintable() or reading != reading.strip()
            or set(reading) & set("*?\\,")):
        return "UNREADABLE"
    return reading


def _corpus(rng: random.Random) -> list[tuple[str, bytes, dict[str, Any]]]:
    cases = [(f"refused {name}", value, options) for name, (value, options) in REFUSED.items()]
    cases += [(f"accepted {name}", value, options) for name, (value, options, _) in ACCEPTED.items()]
    cases += [(f"victim {name}", value, options) for name, (value, options) in _victim_variants("VICTIM").items()]
    for index in range(RANDOM_FILES):
        options: dict[str, Any] = {"charset": rng.choice(list(CHARSETS))}
        if rng.random() < 0.12:
            options["implicit"] = True
        else:
            options["vr"] = rng.choice(VRS)
        cases.append((f"random {index}", _random_value(rng), options))
    return cases


async def test_accepted_patient_ids_are_filed_as_checked_and_refused_ones_are_422(
    orthanc_url: str, orthanc: Orthanc
) -> None:
    rng = random.Random(SEED)
    cases = _corpus(rng)
    started = time.monotonic()
    outcomes = {"accepted": 0, "refused": 0, "accepted by a clinician": 0}
    async with gateway(orthanc_url) as client:
        for name, value, options in cases:
            file = crafted(value, **options)
            expected = _expected_reading(value, options.get("vr", b"LO"), options.get("charset", "ISO_IR 100"),
                                         options.get("implicit", False))
            as_clinician = rng.random() < 0.25
            claim = _claim(expected)
            headers = clinician() if as_clinician else patient(claim)
            response = await client.post("/exams", files=upload_files(file), headers=headers)
            filed = await filed_under(orthanc.url, file.sop_uid)
            where = (name, value, options, response.text)
            if response.status_code == 200:
                [dataset] = response.json()
                read = parse_qs(urlsplit(dataset["00081190"]["Value"][0]).query)["PatientId"][0]
                assert read == expected, where  # what the gateway checked: the bytes' plain reading
                assert filed == [read], where  # ... and what Orthanc filed
                outcomes["accepted by a clinician" if as_clinician else "accepted"] += 1
            else:
                assert response.status_code == 422, where
                assert response.json()["error"]["details"].get("attribute") == "PatientID", where
                assert filed == [], where
                outcomes["refused"] += 1
    elapsed = time.monotonic() - started
    assert outcomes["accepted"] >= 40, outcomes  # the fuzz reached both sides of the rule
    assert outcomes["accepted by a clinician"] >= 10, outcomes
    assert outcomes["refused"] >= 150, outcomes
    assert elapsed < 60, (elapsed, outcomes)
