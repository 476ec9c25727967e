"""Where the gateway's CPU per request goes, by layer: py-spy's samples of a loaded gateway, sorted by the frame that
was running (the leaf), each layer's share times the CPU per request measured over the same load.

`bench/run.py` profiles the gateway during one more 1-client QIDO run and prints the table next to the baseline in
`bench/profile-baseline.json` (the layers before issue 15's work). By hand::

    .venv/bin/py-spy record -p <gateway pid> -r 400 -d 12 -f raw -o samples.txt --nonblocking
    .venv/bin/python -m bench.profile samples.txt 1727      # the CPU µs per request measured meanwhile
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

BASELINE = Path(__file__).with_name("profile-baseline.json")

# (layer, what the leaf frame's file path contains), first match wins. The event loop's own frame is the C loop
# (uvloop) with the socket reads and writes it makes; a socket write made from Python is counted where it is made.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("event loop and socket I/O (uvloop, syscalls)", ("asyncio/runners.py", "asyncio/", "uvloop")),
    ("HTTP server (uvicorn, httptools, the edge's limits)", ("uvicorn/", "httptools", "gateway/edge/http.py")),
    ("Starlette (middleware stack, routing, responses)", ("starlette/",)),
    ("request middleware, access log, metrics", ("gateway/edge/middleware.py", "gateway/edge/context.py",
                                                  "structlog/", "prometheus_client/", "gateway/ops/", "logging/",
                                                  "secrets.py", "uuid.py", "random.py")),
    ("authentication", ("gateway/auth/", "joserfc/", "gateway/audit/facts.py")),
    ("JSON in and out", ("json/",)),
    ("upstream client (exchange pool or aiohttp)", ("aiohttp/", "gateway/upstream/client.py",
                                                    "gateway/upstream/exchange.py", "yarl/", "multidict/",
                                                    "urllib/", "gateway/upstream/profiles.py")),
    ("the search: parameters, scope, filter, links", ("gateway/exams/", "gateway/edge/params.py", "gateway/dicom/",
                                                      "gateway/upstream/ownership.py")),
)
OTHER = "other"

_FRAME = re.compile(r"\((?P<path>[^()]*?)(?::\d+)?\)$")


def layer_of(frame: str) -> str:
    match = _FRAME.search(frame)
    path = match.group("path") if match else frame
    for layer, needles in LAYERS:
        if any(needle in path for needle in needles):
            return layer
    return OTHER


def shares(raw: str) -> dict[str, float]:
    """Each layer's share of the samples in py-spy's raw (collapsed) output: `frame;frame;...;leaf count`."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[layer_of(stack.rsplit(";", 1)[-1])] += int(count)
    total = sum(counts.values())
    return {layer: n / total for layer, n in counts.items()} if total else {}


def microseconds(raw: str, cpu_us: float) -> dict[str, float]:
    return {layer: share * cpu_us for layer, share in shares(raw).items()}


def baseline() -> tuple[str, dict[str, float]]:
    """(what the baseline was measured on, µs per layer)."""
    data = json.loads(BASELINE.read_text())
    return str(data["measured"]), {str(k): float(v) for k, v in data["us_per_request"].items()}


def table(now: dict[str, float], before: dict[str, float] | None = None) -> list[str]:
    layers = [name for name, _ in LAYERS] + [OTHER]
    head = "| layer | before µs/request | now µs/request |" if before else "| layer | µs/request |"
    out = [head, "|---|---|---|" if before else "|---|---|"]
    for layer in layers:
        if layer not in now and not (before and layer in before):
            continue
        cells = [f"{before.get(layer, 0):.0f}"] if before else []
        cells.append(f"{now.get(layer, 0):.0f}")
        out.append(f"| {layer} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(before.values()):.0f}**"] if before else []
    totals.append(f"**{sum(now.values()):.0f}**")
    out.append("| all (utime+stime per request) | " + " | ".join(totals) + " |")
    return out


if __name__ == "__main__":
    print("\n".join(table(microseconds(Path(sys.argv[1]).read_text(), float(sys.argv[2])))))
