"""Run one of the page's curl commands, as written, against a running gateway with the real curl binary.

The commands are read as the page means them, with its two slips mended and nothing else changed:
- `curl -- request POST` (a space inside `--request`) is read as `--request POST`;
- a line that does not end in a backslash still continues the command (two of the page's blocks miss one).
Then `https://your-dicom-service` becomes the gateway's URL, and the section's placeholders (`STUDY_UID`, a file
path) their values. `--globoff` keeps curl from reading `{...}` and `[...]` in a URL as a pattern. The request that
reaches the gateway is then what the page's command sends: curl's own headers, content type and body bytes.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PAGE_HOST = "https://your-dicom-service"
CURL = shutil.which("curl") or "curl"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return httpx.Response(self.status, headers=self.headers, content=self.body).json()

    @property
    def media_type(self) -> str:
        content_type: str = self.headers.get("content-type", "")
        return content_type.partition(";")[0].strip()


def arguments(command: str) -> list[str]:
    """The command's arguments after `curl`, with the page's slips mended (see the module's docstring)."""
    # A backslash-newline continues the line; any other newline outside quotes is whitespace to shlex, as a
    # continuation the page forgot would be; newlines inside quotes stay (they are part of a `--data` body).
    words = shlex.split(command.replace("\\\n", "\n"))
    assert words[0] == "curl", command
    args: list[str] = []
    rest = iter(words[1:])
    for word in rest:
        if word == "--":  # `-- request` -> `--request`
            word = "--" + next(rest)
        args.append(word)
    return args


def run(command: str, base_url: str, substitutions: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> Answer:
    """Send the command to `base_url` (the page's host replaced) and return what the gateway answered.

    `substitutions` replace the section's placeholders in every argument; `headers` are added (a token, when the
    gateway runs with authentication on), and are the only thing the page does not say."""
    args = []
    for arg in arguments(command):
        arg = arg.replace(PAGE_HOST, base_url.rstrip("/"))
        for placeholder, value in (substitutions or {}).items():
            arg = arg.replace(placeholder, value)
        args.append(arg)
    for name, value in (headers or {}).items():
        args += ["--header", f"{name}: {value}"]
    with tempfile.TemporaryDirectory(prefix="contract-curl-") as work:
        head, body = Path(work) / "head", Path(work) / "body"
        done = subprocess.run(
            [CURL, "--silent", "--show-error", "--globoff", "--max-time", str(timeout), "--dump-header", str(head),
             "--output", str(body), *args],
            capture_output=True, text=True, timeout=timeout + 10, check=False,
        )
        assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
        return Answer(*_head(head.read_text(encoding="latin-1")), body.read_bytes() if body.exists() else b"")


def _head(text: str) -> tuple[int, httpx.Headers]:
    """The status and headers of the last response curl dumped (a `100 Continue` may come first)."""
    blocks = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    status_line, *lines = blocks[-1].split("\n")
    pairs = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines if ":" in line)]
    return int(status_line.split()[1]), httpx.Headers(pairs)
