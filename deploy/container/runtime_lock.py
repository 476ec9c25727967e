"""Print the runtime subset of requirements.lock: the entries the gateway needs to run, hashes and all.

    python deploy/container/runtime_lock.py [pyproject.toml] [requirements.lock] > runtime.lock

requirements.lock is compiled with `--extra dev`, so it also pins pytest, mypy, ruff, uv, setuptools... The container
image should not carry those. This script walks the dependency closure of `[project].dependencies` (extras such as
`uvicorn[standard]` included, environment markers evaluated for *this* interpreter and platform) using the metadata
of the distributions installed in the running environment, and keeps only those entries of the lock, unchanged. So
the image installs exactly the locked versions, hash-checked, without a second lock file that could drift.

Run it with an interpreter where the whole lock is installed (the Dockerfile's builder venv) on the same platform as
the image. It fails if a needed distribution is not installed or not in the lock. No network, standard library plus
`packaging` (pinned in the lock).
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure(roots: list[str]) -> dict[str, set[str]]:
    """Canonical distribution name -> extras requested, for everything `roots` needs here."""
    needed: dict[str, set[str]] = {}
    queue = [Requirement(text) for text in roots]
    queue = [req for req in queue if wanted(req, set())]
    while queue:
        req = queue.pop()
        name = canonicalize_name(req.name)
        extras = {canonicalize_name(extra) for extra in req.extras}
        seen = needed.get(name)
        if seen is not None and extras <= seen:
            continue
        needed[name] = (seen or set()) | extras
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            sys.exit(f"runtime_lock: {req.name} is needed but not installed in {sys.prefix}")
        for text in requires:
            child = Requirement(text)
            if wanted(child, needed[name]):
                queue.append(child)
    return needed


def lock_entries(lock_text: str) -> dict[str, str]:
    """Canonical name -> the entry's text (`name==version \\` and its hash lines), comments left out."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lock_text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():
            name = canonicalize_name(Requirement(stripped.rstrip("\\").strip()).name)
            current = entries.setdefault(name, [])
        if current is None:
            sys.exit(f"runtime_lock: unexpected line in the lock: {line!r}")
        current.append(line)
    return {name: "\n".join(lines) for name, lines in entries.items()}


def main(argv: list[str]) -> int:
    pyproject = Path(argv[0] if argv else "pyproject.toml")
    lock = Path(argv[1] if len(argv) > 1 else "requirements.lock")
    roots = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    entries = lock_entries(lock.read_text())
    needed = closure(roots)
    missing = sorted(set(needed) - set(entries))
    if missing:
        sys.exit(f"runtime_lock: {', '.join(missing)} needed at runtime but not pinned in {lock}")
    print(f"# Runtime subset of {lock.name} (deploy/container/runtime_lock.py): {len(needed)} of {len(entries)}.")
    for name in sorted(needed):
        print(entries[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
