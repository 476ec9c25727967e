"""Audit messages to the audit record repository: RFC 5424 syslog over TCP (RFC 6587) or TLS (RFC 5425).

`frame()` turns one audit message (an XML document, opaque bytes) into one octet-counted RFC 5424 syslog frame;
`SyslogSender` writes frames on one persistent connection to `AUDIT_SYSLOG_URL` and raises when it cannot, so that
its caller (the audit delivery worker, at least once) keeps the records and retries.

The header follows the transmission profiles of DICOM PS3.15 A.6 (SYSLOG-TLS) and IHE ITI TF-2 §3.20.4.1.2
(Record Audit Event [ITI-20]):
- PRI: facility 10, "security/authorization messages" (both: "shall"); severity 5 "notice" for most messages,
  4 "warning" where the outcome is a failure (both: "should"), so most audit messages start ``<85>1``.
- MSGID: IHE requires exactly ``IHE+RFC-3881``; DICOM only requires that it be set ("DICOM+RFC3881 may be used").
  ``IHE+RFC-3881`` satisfies both, so it is the default; dcm4chee's `DICOM+RFC3881` is `DICOM_MSGID`.
- STRUCTURED-DATA: none (``-``); MSG: the XML in UTF-8, starting with the BOM, which RFC 5424 §6.4 requires of a
  UTF-8 MSG (an XML parser accepts a leading BOM: XML 1.0 §4.3.3, Appendix F.1).

What "sent" means: `send()` returns once the server's TCP has acknowledged every byte (Linux: `SIOCOUTQ` is 0),
not merely once the bytes left this process. Syslog has no application-level acknowledgement (that is RELP,
which no ATNA repository speaks), so a server that accepts bytes into its socket and then dies before reading them
loses them unseen; everything short of that raises `SyslogUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
import ssl
import struct
import termios
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger(__name__)

# RFC 5424 §6.2.1, IANA "syslog Message Facilities": 10 is security/authorization (Linux's authpriv). DICOM PS3.15
# A.6 and IHE ITI TF-2 §3.20.4.1.2: "The PRI field shall be set using the facility value of 10".
FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5  # "normal but significant": most audit messages (PS3.15 A.6, ITI-20)
SEVERITY_WARNING = 4  # for a failure outcome, where the message says so (PS3.15 A.6, ITI-20)

IHE_MSGID = "IHE+RFC-3881"  # IHE ITI TF-2 §3.20.4.1.2: the MSGID "shall be set to IHE+RFC-3881"
DICOM_MSGID = "DICOM+RFC3881"  # DICOM PS3.15 A.6: "may be used"; dcm4che's default

# RFC 5425 §4.1: the port assigned to syslog over TLS. Plain TCP (RFC 6587) has none, so tcp:// names its port.
TLS_DEFAULT_PORT = 6514

NILVALUE = "-"
BOM = b"\xef\xbb\xbf"  # RFC 5424 §6.4: BOM = %xEF.BB.BF
NO_STRUCTURED_DATA = NILVALUE

# RFC 5424 §6: HOSTNAME 1*255, APP-NAME 1*48, PROCID 1*128, MSGID 1*32 PRINTUSASCII (%d33-126), or NILVALUE.
_FIELD_LIMITS = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}

# Before a first write on a new TLS connection, how long to listen for the server refusing our client certificate.
# With TLS 1.3 (and with rsyslog's check after the handshake even on 1.2) the client's handshake completes before the
# server has judged the certificate: its verdict, a close, arrives about one round trip later. Bytes written in that
# window would be acknowledged by the server's kernel and then dropped unseen.
_TLS_VERDICT_S = 0.1
_ACK_POLL_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


class SyslogUnavailable(Exception):
    """The audit record repository did not take the messages; they may or may not have arrived: send them again.

    Raised only to the audit delivery worker, never into a request: it is not part of `gateway.errors`.
    """


_PRINTABLE_ASCII = re.compile("[!-~]+")  # PRINTUSASCII (RFC 5424 §6): %d33-126, at least one


def _header_field(name: str, value: str) -> str:
    limit = _FIELD_LIMITS[name]
    if len(value) > limit or _PRINTABLE_ASCII.fullmatch(value) is None:
        raise ValueError(f"syslog {name.upper().replace('_', '-')} must be 1-{limit} printable US-ASCII "
                         f"characters without spaces (RFC 5424 §6), or '-': {value!r}")
    return value


def _timestamp(moment: datetime) -> str:
    # RFC 5424 §6.2.3 (RFC 3339 restricted): 4-digit year, "T", at most 6 fraction digits, "Z" for UTC. Always six
    # digits, so that frames of the same record are byte-identical; %Y is not used because it does not pad years < 1000.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a syslog TIMESTAMP needs a timezone-aware datetime (RFC 5424 §6.2.3)")
    utc = moment.astimezone(UTC)
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
            f".{utc.microsecond:06d}Z")


def frame(
    message: bytes,
    *,
    hostname: str,
    app_name: str,
    procid: str,
    timestamp: datetime,
    severity: int,
    msgid: str = IHE_MSGID,
    facility: int = FACILITY_AUTHPRIV,
) -> bytes:
    """One RFC 6587 §3.4.1 octet-counted frame, ``MSG-LEN SP SYSLOG-MSG``, of one RFC 5424 message around ``message``.

    ``message`` (the audit XML) goes out byte for byte after the BOM; it must be UTF-8 (RFC 5424 §6.4 MSG-UTF8) and
    must not carry a BOM of its own. Header fields are checked against RFC 5424 §6: a wrong one raises `ValueError`.
    """
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0-23 (RFC 5424 §6.2.1): {facility}")
    if not 0 <= severity <= 7:
        raise ValueError(f"syslog severity must be 0-7 (RFC 5424 §6.2.1): {severity}")
    if message.startswith(BOM):
        raise ValueError("the message already starts with a BOM; frame() adds the one RFC 5424 §6.4 asks for")
    try:
        message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the message is not UTF-8 (RFC 5424 §6.4 MSG-UTF8): {exc}") from None
    header = " ".join((
        f"<{facility * 8 + severity}>1",  # PRI VERSION (§6.2.1, §6.2.2)
        _timestamp(timestamp),
        _header_field("hostname", hostname),
        _header_field("app_name", app_name),
        _header_field("procid", procid),
        _header_field("msgid", msgid),
        NO_STRUCTURED_DATA,
    ))
    syslog_msg = b"".join((header.encode("ascii"), b" ", BOM, message))
    return b"%d %b" % (len(syslog_msg), syslog_msg)


def _check_framed(data: bytes) -> None:
    # A frame whose count is wrong would shift every later message on the connection: refuse it before writing.
    length, sep, rest = data.partition(b" ")
    if not sep or not length.isdigit() or length.startswith(b"0") or int(length) != len(rest):
        raise ValueError("send() takes frames made by frame() (MSG-LEN SP SYSLOG-MSG, RFC 6587 §3.4.1)")


def _unacknowledged(writer: asyncio.StreamWriter, raw: asyncio.WriteTransport) -> int:
    """Bytes not yet acknowledged by the peer's TCP: still in our buffers (TLS's and the socket transport's), or in
    the kernel's send queue (Linux SIOCOUTQ: unsent plus unacknowledged). Where the kernel cannot tell, 0 for it."""
    pending = writer.transport.get_write_buffer_size()
    if raw is not writer.transport:
        pending += raw.get_write_buffer_size()
    sock = raw.get_extra_info("socket")
    if sock is None:
        return pending
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # TIOCOUTQ == SIOCOUTQ on a socket
    except OSError:
        return pending
    count: int = struct.unpack("i", queued)[0]
    return pending + count


@dataclass(frozen=True, slots=True)
class SyslogAddress:
    host: str
    port: int
    tls: bool


def syslog_address(url: str) -> SyslogAddress:
    """The repository `url` names: `tcp://host:port` (RFC 6587) or `tls://host[:port]` (RFC 5425, 6514 by default);
    `ValueError` for anything else. The one reading of AUDIT_SYSLOG_URL: the settings check it with this too."""
    usage = "AUDIT_SYSLOG_URL must be tcp://host:port or tls://host[:port]"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise ValueError(f"{usage}: {url!r}") from None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username is not None or any(c.isspace() for c in url):
        raise ValueError(f"{usage}: {url!r}")
    if port is None and parts.scheme == "tcp":
        raise ValueError(f"{usage} (a tcp:// URL names its port: plain TCP syslog has no assigned one): {url!r}")
    return SyslogAddress(parts.hostname, port if port is not None else TLS_DEFAULT_PORT, parts.scheme == "tls")


class SyslogSender:
    """Writes syslog frames to one audit record repository over a persistent TCP or TLS connection.

    ``url`` is ``tcp://host:port`` (RFC 6587) or ``tls://host[:port]`` (RFC 5425, port 6514 by default). For TLS the
    server's certificate is verified against ``ca_file`` (the system's CAs without one) and its name against the
    URL's host (RFC 5425 §5.2); ``cert_file`` (and ``key_file``, unless the key is in ``cert_file``) is the gateway's
    client certificate, which ATNA's mutual authentication asks for (IHE ITI TF-2 §3.19, Authenticate Node).
    ``timeout_s`` bounds each `send()`: connecting (TLS handshake included) and writing until acknowledged.
    One `send()` at a time: concurrent calls wait for each other, so frames never interleave.
    """

    def __init__(
        self,
        *,
        url: str,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        address = syslog_address(url)
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.host = address.host
        self.port = address.port
        self.timeout_s = timeout_s
        self._ssl: ssl.SSLContext | None = None
        if address.tls:
            self._ssl = self._tls_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        elif ca_file or cert_file or key_file:
            raise ValueError("ca_file, cert_file and key_file are for tls:// only; this URL would send in the clear")
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def _tls_context(*, ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
        if key_file is not None and cert_file is None:
            raise ValueError("key_file without cert_file")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
        # RFC 5425 is built on TLS 1.2; DICOM PS3.15 A.6: "TLS MUST be used, and version 1.2 or later is
        # RECOMMENDED". Hostname checking and CERT_REQUIRED (RFC 5425 §5.2) are create_default_context's defaults.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        return context

    @property
    def connected(self) -> bool:
        return self._connection is not None

    async def send(self, messages: list[bytes]) -> None:
        """Write these frames (from `frame()`), in order; return once the server's TCP has acknowledged them all.

        Raises `SyslogUnavailable` (and drops the connection; the next call reconnects) when the server cannot be
        reached, refuses TLS, closes or resets the connection, or the whole takes longer than ``timeout_s``. The
        frames may then have arrived in part: send them again (at least once). `ValueError` for a non-frame.
        """
        for data in messages:
            _check_framed(data)
        if not messages:
            return
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    connection = await self._connect()
                    connection.writer.writelines(messages)
                    await connection.writer.drain()
                    await connection.acknowledged()
            except (OSError, ssl.SSLError, TimeoutError, EOFError) as exc:
                self._drop()
                reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                log.warning("audit_syslog_send_failed", host=self.host, port=self.port, reason=reason)
                raise SyslogUnavailable(f"syslog {self.host}:{self.port}: {reason}") from exc

    async def aclose(self) -> None:
        """Close the connection (a TLS close_notify, then FIN), waiting at most ``timeout_s``."""
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            connection.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await connection.writer.wait_closed()

    async def _connect(self) -> _Connection:
        if self._connection is not None:
            if self._connection.alive():
                return self._connection
            self._drop()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        raw = writer.transport
        if self._ssl is not None:
            # StreamWriter.start_tls rather than open_connection(ssl=): it leaves us the socket transport, whose
            # buffer `_unacknowledged` must count too.
            await writer.start_tls(self._ssl, server_hostname=self.host)
        connection = _Connection(reader, writer, raw)
        if self._ssl is not None:
            await connection.await_tls_verdict()
        self._connection = connection
        log.info("audit_syslog_connected", host=self.host, port=self.port, tls=self._ssl is not None)
        return connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.raw.abort()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: asyncio.WriteTransport) -> None:
        self.reader = reader
        self.writer = writer
        self.raw = raw

    def alive(self) -> bool:
        # The server never writes on a syslog connection, so a FIN (at_eof) or a reset (exception) means it is gone;
        # writing into such a connection would "succeed" into a dead socket.
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None)

    async def await_tls_verdict(self) -> None:
        try:
            async with asyncio.timeout(_TLS_VERDICT_S):
                data = await self.reader.read(1)
        except TimeoutError:
            return  # no verdict is acceptance: the server keeps the connection open
        if not data:
            raise EOFError("the server closed the TLS connection after the handshake (client certificate refused?)")
        raise EOFError("the server sent data on a syslog connection")

    async def acknowledged(self) -> None:
        # drain() only says that the bytes are below the buffers' high-water mark. Wait until the peer's TCP has
        # acknowledged all of them, so that a server gone away shows as an error (a reset, a FIN, the timeout)
        # rather than as a silent loss.
        polls = iter(_ACK_POLL_S)
        while True:
            if not self.alive():
                raise EOFError("the server closed the connection before acknowledging what was sent")
            if _unacknowledged(self.writer, self.raw) == 0:
                return
            await asyncio.sleep(next(polls, _ACK_POLL_S[-1]))
