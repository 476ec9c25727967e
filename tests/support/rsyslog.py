"""Run a private rsyslogd (Debian's rsyslog) for tests: an audit record repository on a free loopback port.

Usage from a fixture::

    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"))            # plain TCP (RFC 6587)
    server = Rsyslog(run_dir, tls=RsyslogTls(ca_file=..., cert_file=..., key_file=...))   # RFC 5425
    server.start()
    try:
        yield server
    finally:
        server.stop()

    received = server.wait_for(3)   # the first 3 messages rsyslogd wrote, in order of arrival

Everything lives in ``run_dir``: the config, rsyslogd's work directory, its pid file, its own log
(``rsyslogd.log``) and ``received.jsonl``, one JSON object per received message. Each object holds the message
exactly as it arrived (``rawmsg``: the SYSLOG-MSG after imtcp removed the octet count, control characters and a
trailing LF kept) and the header fields as rsyslog's own RFC 5424 parser read them, so a test checks both what was
sent and that a real syslog server understood it. imtcp listens on 127.0.0.1 only, with octet-counted framing
(RFC 6587 §3.4.1) on; with ``tls`` it speaks TLS only (the gtls driver, rsyslog-gnutls) and, by default, demands a
client certificate signed by the CA (``x509/certvalid``: ATNA's mutual authentication).
``maxMessageSize`` is 4 MiB by default: at rsyslog's own default of 8 KiB a large audit message arrives in pieces.
start() takes about 0.1 s, stop() about 0.1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.managed import ManagedServer
from tests.support.orthanc import free_port

RSYSLOGD = Path(shutil.which("rsyslogd") or "/usr/sbin/rsyslogd")
GTLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
MAX_MESSAGE_SIZE = 4 * 1024 * 1024

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0

# The header fields rsyslog parsed (its pmrfc5424), and the raw message. "jsonf" writes `"name":"value"`, escaped.
_FIELDS = (("pri", "pri"), ("timestamp", "timereported:::date-rfc3339"), ("hostname", "hostname"),
           ("app_name", "app-name"), ("procid", "procid"), ("msgid", "msgid"), ("protocol_version", "protocol-version"))


def gtls_available() -> bool:
    """Whether rsyslog's TLS driver (Debian's rsyslog-gnutls) is installed."""
    return any(Path(path).exists() for path in (GTLS_MODULE, "/usr/lib/rsyslog/lmnsd_gtls.so"))


@dataclass(frozen=True)
class RsyslogTls:
    ca_file: Path
    cert_file: Path
    key_file: Path
    auth_mode: str = "x509/certvalid"  # "anon": no client certificate asked for


@dataclass(frozen=True)
class Received:
    """One message as rsyslogd wrote it."""

    raw: bytes  # the SYSLOG-MSG, byte for byte
    pri: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    protocol_version: str


def _property(outname: str, spec: str) -> str:
    name, _, options = spec.partition(":::")
    dateformat = f' dateFormat="{options.removeprefix("date-")}"' if options.startswith("date-") else ""
    return f'  property(outname="{outname}" name="{name}" format="jsonf"{dateformat})\n'


class Rsyslog(ManagedServer):
    """One rsyslogd process whose config, work directory, logs and pid file live in ``run_dir``."""

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        tls: RsyslogTls | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.max_message_size = max_message_size
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    @property
    def received_path(self) -> Path:
        return self.run_dir / "received.jsonl"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "rsyslogd.log"

    def config(self) -> str:
        work = self.run_dir / "work"
        tls_global = ""
        tls_module = ""
        if self.tls is not None:
            tls_global = (f'  defaultNetstreamDriver="gtls"\n'
                          f'  defaultNetstreamDriverCAFile="{self.tls.ca_file}"\n'
                          f'  defaultNetstreamDriverCertFile="{self.tls.cert_file}"\n'
                          f'  defaultNetstreamDriverKeyFile="{self.tls.key_file}"\n')
            tls_module = f' streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{self.tls.auth_mode}"'
        comma = '  constant(value=",")\n'
        fields = comma.join(_property(out, spec) for out, spec in (*_FIELDS, ("rawmsg", "rawmsg")))
        return (
            "global(\n"
            f'  workDirectory="{work}"\n'
            f'  maxMessageSize="{self.max_message_size}"\n'
            # Keep the message as it arrived: rsyslog would otherwise write a LF as "#012" and drop a trailing one.
            '  parser.escapeControlCharactersOnReceive="off"\n'
            '  parser.dropTrailingLFOnReception="off"\n'
            f"{tls_global})\n"
            f'module(load="imtcp"{tls_module})\n'
            'template(name="received" type="list") {\n'
            '  constant(value="{")\n'
            f"{fields}"
            '  constant(value="}\\n")\n'
            "}\n"
            'ruleset(name="audit") {\n'
            f'  action(type="omfile" file="{self.received_path}" template="received")\n'
            "}\n"
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="audit"'
            ' supportOctetCountedFraming="on")\n'
            # rsyslogd's own messages (start, stop, TLS and framing errors) go to the default ruleset.
            f'*.* action(type="omfile" file="{self.log_path}")\n'
        )

    def start(self) -> None:
        """Start rsyslogd (on the same port as before, after a stop) and wait until it accepts connections."""
        if self.is_running():
            return
        (self.run_dir / "work").mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / "rsyslog.conf"
        config_path.write_text(self.config())
        pid_path = self.run_dir / "rsyslogd.pid"
        pid_path.unlink(missing_ok=True)
        with (self.run_dir / "rsyslogd.stderr").open("ab") as stderr:
            self._process = subprocess.Popen(
                [str(RSYSLOGD), "-n", "-f", str(config_path), "-i", str(pid_path)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=self.run_dir,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited ({self._process.returncode}) at start: {self._diagnostics()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"rsyslogd did not listen on {self.port}: {self._diagnostics()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (rsyslogd writes out what it holds and closes its connections) and wait. No-op when not running."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait: what it held is lost, its connections are reset."""
        self._signal(signal.SIGKILL)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _signal(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signum)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)

    def received(self) -> list[Received]:
        """Every message rsyslogd has written so far, in order (a partly written last line is left for later)."""
        try:
            data = self.received_path.read_bytes()
        except FileNotFoundError:
            return []
        messages = []
        for line in data.split(b"\n")[:-1]:
            fields = json.loads(line)
            raw = fields.pop("rawmsg").encode("utf-8")
            messages.append(Received(raw=raw, **fields))
        return messages

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages were written; return all of them (an AssertionError after timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.received()
            if len(messages) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(messages) >= count, f"rsyslogd wrote {len(messages)} of {count} messages: {self._diagnostics()}"
        return messages

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.run_dir / "rsyslogd.stderr", self.log_path):
            if path.exists():
                parts.append(f"{path.name}: {path.read_text(errors='replace')[-2000:]}")
        return "; ".join(parts) or "no output"
