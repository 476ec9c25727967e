"""The syslog transport of the audit trail: RFC 5424 frames, and SyslogSender against a real rsyslogd (Debian's).

What rsyslogd wrote is read back: the raw SYSLOG-MSG as it arrived, and the header as rsyslog's own RFC 5424 parser
understood it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.audit.syslog import BOM, DICOM_MSGID, SyslogSender, SyslogUnavailable, frame
from gateway.settings import SettingsError
from tests.conftest import make_settings
from tests.support.rsyslog import Received, Rsyslog, RsyslogTls, gtls_available

WHEN = dt.datetime(2026, 12, 1, 14, 0, 0, 123456, tzinfo=dt.UTC)
HEADER: dict[str, Any] = {
    "hostname": "gw.example.org", "app_name": "dicom-gateway", "procid": "4242", "timestamp": WHEN,
}

# RFC 5424 §6 HEADER SP STRUCTURED-DATA SP MSG, as this sender writes it (no structured data).
RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<hostname>[!-~]{1,255}) "
    rb"(?P<app_name>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) - (?P<msg>.*)",
    re.DOTALL,
)


def audit_xml(number: int, padding: int = 0) -> bytes:
    """An audit-message-shaped XML document: numbered, multi-line, with non-ASCII text, and ``padding`` more bytes."""
    detail = "".join(f'\n  <ParticipantObjectDetail type="pad" value="{i:08d}"/>' for i in range(padding // 52))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessage number="{number}">\n'
            f'  <ActiveParticipant UserID="Dr. Müller-Łukasz 山田" UserIsRequestor="true"/>{detail}\n'
            "</AuditMessage>\n").encode()


def syslog_msg(framed: bytes) -> bytes:
    """The SYSLOG-MSG inside an octet-counted frame."""
    return framed.partition(b" ")[2]


def number_of(received: Received) -> int:
    match = RFC5424.fullmatch(received.raw)
    assert match is not None, received.raw[:200]
    assert match["msg"].startswith(BOM)
    return int(ET.fromstring(match["msg"][len(BOM):]).attrib["number"])  # noqa: S314 - our own XML, back


# --- frame(): exact bytes and the RFC 5424 rules -------------------------------------------------------------------


def test_frame_is_octet_counted_rfc5424_with_bom() -> None:
    framed = frame(b"<AuditMessage/>", severity=5, **HEADER)
    assert framed == (b"101 <85>1 2026-12-01T14:00:00.123456Z gw.example.org dicom-gateway 4242 IHE+RFC-3881 - "
                      b"\xef\xbb\xbf<AuditMessage/>")
    assert int(framed.split(b" ", 1)[0]) == len(syslog_msg(framed))


def test_frame_counts_octets_not_characters_and_keeps_the_body_byte_for_byte() -> None:
    body = "<A n='Müller 山田'>\r\n\x00\ttail</A>\n".encode()
    framed = frame(body, severity=5, **HEADER)
    assert int(framed.split(b" ", 1)[0]) == len(syslog_msg(framed))
    assert syslog_msg(framed).endswith(b" - " + BOM + body)


def test_frame_writes_utc_whatever_the_timezone() -> None:
    local = dt.datetime(2026, 12, 1, 16, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    framed = frame(b"<x/>", severity=5, **{**HEADER, "timestamp": local})
    assert b" 2026-12-01T14:00:00.000005Z " in framed
    early = dt.datetime(999, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert b" 0999-01-02T03:04:05.000000Z " in frame(b"<x/>", severity=5, **{**HEADER, "timestamp": early})


def test_frame_pri_is_facility_times_8_plus_severity() -> None:
    assert syslog_msg(frame(b"<x/>", severity=4, **HEADER)).startswith(b"<84>1 ")
    assert syslog_msg(frame(b"<x/>", severity=0, facility=0, **HEADER)).startswith(b"<0>1 ")
    assert syslog_msg(frame(b"<x/>", severity=7, facility=23, **HEADER)).startswith(b"<191>1 ")
    assert b" DICOM+RFC3881 - " in frame(b"<x/>", severity=5, msgid=DICOM_MSGID, **HEADER)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hostname", ""), ("hostname", "gw example"), ("hostname", "h" * 256), ("hostname", "gw.exämple.org"),
        ("app_name", "a" * 49), ("app_name", "app\tname"), ("procid", "p" * 129), ("msgid", "m" * 33),
        ("msgid", "IHE RFC-3881"), ("procid", "\x7f"),
    ],
)
def test_frame_rejects_header_fields_outside_rfc5424(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 5424 §6"):
        frame(b"<x/>", severity=5, **{**HEADER, field: value})


def test_frame_accepts_the_longest_fields_and_nilvalue() -> None:
    longest: dict[str, Any] = {"hostname": "h" * 255, "app_name": "a" * 48, "procid": "p" * 128, "msgid": "m" * 32}
    framed = frame(b"<x/>", severity=5, timestamp=WHEN, **longest)
    assert f" {'h' * 255} {'a' * 48} {'p' * 128} {'m' * 32} - ".encode() in framed
    assert b" - - - - - " in frame(b"<x/>", severity=5, timestamp=WHEN, hostname="-", app_name="-", procid="-",
                                   msgid="-")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"severity": 8}, "severity"), ({"severity": -1}, "severity"), ({"facility": 24}, "facility"),
        ({"timestamp": dt.datetime(2026, 12, 1, 14, 0)}, "timezone-aware"),  # naive: the point of the test
    ],
)
def test_frame_rejects_bad_pri_and_naive_timestamps(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frame(b"<x/>", **{"severity": 5, **HEADER, **overrides})


def test_frame_rejects_a_body_that_is_not_utf8_or_brings_its_own_bom() -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        frame("<x>é</x>".encode("latin-1"), severity=5, **HEADER)
    with pytest.raises(ValueError, match="BOM"):
        frame(BOM + b"<x/>", severity=5, **HEADER)


# --- SyslogSender: configuration -----------------------------------------------------------------------------------


REFUSED_URLS = ["tcp://127.0.0.1", "udp://127.0.0.1:514", "http://h:1", "tcp://:514", "tcp://h:514/path",
                "127.0.0.1:514", "tcp://h:99999", "tcp://h:x", "tcp://u@h:514", "tcp://h:514#x", "tcp://h:514?a=1",
                "tls://h :6514", "tcp://h:514\n"]
ACCEPTED_URLS = ["tcp://127.0.0.1:514", "tcp://repo.example.org:601/", "tls://repo.example.org", "tls://[::1]:6514"]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_sender_rejects_urls_it_cannot_use(url: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)syslog"):
        SyslogSender(url=url)


@pytest.mark.parametrize("url", REFUSED_URLS + ACCEPTED_URLS)
def test_the_settings_take_exactly_the_urls_the_sender_takes(url: str) -> None:
    try:
        SyslogSender(url=url)
        sender_takes = True
    except ValueError:
        sender_takes = False
    assert sender_takes == (url in ACCEPTED_URLS)
    if sender_takes:
        assert make_settings(audit_syslog_url=url).audit_syslog_url == url
    else:
        with pytest.raises(SettingsError, match="AUDIT_SYSLOG_URL"):
            make_settings(audit_syslog_url=url)


def test_sender_tls_defaults_to_port_6514_and_refuses_certificates_for_plain_tcp(tmp_path: Path) -> None:
    assert SyslogSender(url="tls://audit.example.org").port == 6514
    with pytest.raises(ValueError, match="tls:// only"):
        SyslogSender(url="tcp://127.0.0.1:514", ca_file=tmp_path / "ca.pem")


async def test_sender_refuses_what_is_not_a_frame_before_writing_anything(rsyslog: Rsyslog) -> None:
    sender = SyslogSender(url=rsyslog.url)
    good = frame(audit_xml(1), severity=5, **HEADER)
    for bad in (syslog_msg(good), b"99 " + syslog_msg(good), b"0" + good):
        with pytest.raises(ValueError, match="frame"):
            await sender.send([good, bad])
    assert not sender.connected
    await sender.send([good])
    await sender.aclose()
    assert [number_of(r) for r in rsyslog.wait_for(1)] == [1]


# --- SyslogSender against rsyslogd ---------------------------------------------------------------------------------


async def test_messages_arrive_whole_and_in_order_large_ones_included(rsyslog: Rsyslog) -> None:
    bodies = [audit_xml(n, padding=100_000 if n % 4 == 0 else 0) for n in range(40)]
    framed = [frame(body, severity=5 if n % 3 else 4, **HEADER) for n, body in enumerate(bodies)]
    sender = SyslogSender(url=rsyslog.url)
    started = time.perf_counter()
    for batch in range(0, 40, 8):
        await sender.send(framed[batch:batch + 8])
        assert sender.connected
    elapsed = time.perf_counter() - started
    await sender.aclose()

    received = rsyslog.wait_for(40)
    assert len(received) == 40
    assert len(framed[0]) > 100_000
    for n, message in enumerate(received):
        assert message.raw == syslog_msg(framed[n]), f"message {n} differs"
        assert number_of(message) == n
        # rsyslog's own RFC 5424 parser read the header as we meant it.
        assert (message.protocol_version, message.hostname, message.app_name, message.procid, message.msgid) == (
            "1", "gw.example.org", "dicom-gateway", "4242", "IHE+RFC-3881")
        assert message.pri == ("85" if n % 3 else "84")
        assert dt.datetime.fromisoformat(message.timestamp) == WHEN
    assert elapsed < 5.0


async def test_sender_reconnects_after_a_restart_and_raises_while_the_server_is_down(rsyslog: Rsyslog) -> None:
    messages = [frame(audit_xml(n), severity=5, **HEADER) for n in range(6)]
    sender = SyslogSender(url=rsyslog.url, timeout_s=5.0)
    await sender.send(messages[0:2])
    rsyslog.wait_for(2)

    rsyslog.stop()  # a graceful restart: rsyslogd closes our connection (FIN)
    with pytest.raises(SyslogUnavailable):
        await sender.send(messages[2:3])
    assert not sender.connected
    with pytest.raises(SyslogUnavailable):  # still down: refused, at once
        await sender.send(messages[2:3])

    rsyslog.start()
    await sender.send(messages[2:4])  # the caller's retry, then the next one, on a new connection
    assert [number_of(r) for r in rsyslog.wait_for(4)] == [0, 1, 2, 3]

    rsyslog.kill()  # a crash: the connection is reset, nothing closes it politely
    with pytest.raises(SyslogUnavailable):
        await sender.send(messages[4:5])
    rsyslog.start()
    await sender.send(messages[4:6])
    await sender.aclose()
    assert [number_of(r) for r in rsyslog.wait_for(6)] == [0, 1, 2, 3, 4, 5]


async def test_a_send_that_succeeded_was_acknowledged_by_the_server(rsyslog: Rsyslog) -> None:
    """Every frame of every send() that returned is at the server, through restarts between sends (at least once).

    Before each restart (graceful at 10, a crash at 20) the test waits until rsyslogd has written everything: an
    rsyslogd that stops loses what its TCP acknowledged but it had not yet read or written (50-200 ms of messages
    here; seen once in four runs for a graceful stop too), which no plain-syslog sender can see (docs/operations.md,
    audit over syslog). What this shows is that every send after a restart, retried, arrives.
    """
    sender = SyslogSender(url=rsyslog.url, timeout_s=5.0)
    delivered: list[int] = []
    for n in range(30):
        if n == 10:
            rsyslog.wait_for(10)
            rsyslog.stop()
            rsyslog.start()
        if n == 20:
            rsyslog.wait_for(20)
            rsyslog.kill()
            rsyslog.start()
        message = frame(audit_xml(n), severity=5, **HEADER)
        for _attempt in range(3):  # the delivery worker's retry
            try:
                await sender.send([message])
            except SyslogUnavailable:
                continue
            delivered.append(n)
            break
    await sender.aclose()
    assert delivered == list(range(30))
    assert [number_of(r) for r in rsyslog.wait_for(30)] == delivered


async def test_rsyslog_at_its_default_size_limit_cuts_a_large_message_into_pieces(tmp_path: Path) -> None:
    """Why docs/operations.md asks for maxMessageSize: at rsyslog's default (8 KiB) a large audit message is stored
    as 8 KiB pieces, each a message of its own (only the first has our header), and nothing tells the sender.
    The framing stays in step: the next message is whole."""
    large, small = (frame(audit_xml(n, padding=p), severity=5, **HEADER) for n, p in ((0, 20_000), (1, 0)))
    with Rsyslog(tmp_path / "rsyslog", max_message_size=8192) as server:
        sender = SyslogSender(url=server.url)
        await sender.send([large, small])
        await sender.aclose()
        received = server.wait_for(4)
    assert received[0].raw == syslog_msg(large)[:8192]
    assert [r.msgid for r in received[1:-1]] == ["-", "-"]  # the rest of the XML, read as two header-less messages
    assert received[-1].raw == syslog_msg(small)


async def test_a_server_that_stops_reading_makes_send_time_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and never reads: a stuck repository
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sender = SyslogSender(url=f"tcp://127.0.0.1:{port}", timeout_s=0.5)
        big = frame(audit_xml(0, padding=8_000_000), severity=5, **HEADER)
        started = time.perf_counter()
        with pytest.raises(SyslogUnavailable, match="timed out"):
            await sender.send([big])
        assert time.perf_counter() - started < 2.0
        assert not sender.connected


async def test_nothing_listening_raises_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = SyslogSender(url=f"tcp://127.0.0.1:{port}", timeout_s=5.0)
    started = time.perf_counter()
    with pytest.raises(SyslogUnavailable, match="ConnectionRefused"):
        await sender.send([frame(b"<x/>", severity=5, **HEADER)])
    assert time.perf_counter() - started < 1.0


async def test_concurrent_sends_never_interleave(rsyslog: Rsyslog) -> None:
    sender = SyslogSender(url=rsyslog.url)
    batches = [[frame(audit_xml(10 * b + i, padding=20_000), severity=5, **HEADER) for i in range(10)]
               for b in range(5)]
    await asyncio.gather(*(sender.send(batch) for batch in batches))
    await sender.aclose()
    numbers = [number_of(r) for r in rsyslog.wait_for(50)]
    assert sorted(numbers) == list(range(50))
    for b in range(5):  # each batch contiguous and in order
        start = numbers.index(10 * b)
        assert numbers[start:start + 10] == list(range(10 * b, 10 * b + 10))


# --- TLS (RFC 5425) with mutual authentication ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    if server:
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca[0].subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca[1], hashes.SHA256()))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, the repository's server certificate (127.0.0.1) and the gateway's client certificate; another CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca("Audit Test CA")
    server = _leaf("audit.test", ca, server=True)
    client = _leaf("dicom-gateway.test", ca, server=False)
    other = _ca("Some Other CA")
    files = {"ca.pem": ca[0], "server.pem": server[0], "client.pem": client[0], "other-ca.pem": other[0]}
    for filename, cert in files.items():
        (directory / filename).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(_key_pem(server[1]))
    (directory / "client.key").write_bytes(_key_pem(client[1]))
    return Pki(ca=directory / "ca.pem", server_cert=directory / "server.pem", server_key=directory / "server.key",
               client_cert=directory / "client.pem", client_key=directory / "client.key",
               other_ca=directory / "other-ca.pem")


@pytest.fixture
def rsyslog_tls(pki: Pki, tmp_path: Path) -> Iterator[Rsyslog]:
    if not gtls_available():
        pytest.skip("rsyslog-gnutls is not installed (deploy/dev/install-deps.sh installs it)")
    tls = RsyslogTls(ca_file=pki.ca, cert_file=pki.server_cert, key_file=pki.server_key)
    with Rsyslog(tmp_path / "rsyslog", tls=tls) as server:
        yield server


async def test_tls_with_client_certificate_delivers_whole_messages(rsyslog_tls: Rsyslog, pki: Pki) -> None:
    assert rsyslog_tls.url.startswith("tls://")
    sender = SyslogSender(url=rsyslog_tls.url, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    framed = [frame(audit_xml(n, padding=100_000 if n == 3 else 0), severity=5, **HEADER)
              for n in range(8)]
    await sender.send(framed[:4])
    await sender.send(framed[4:])
    await sender.aclose()
    received = rsyslog_tls.wait_for(8)
    assert [r.raw for r in received] == [syslog_msg(f) for f in framed]
    assert received[0].msgid == "IHE+RFC-3881"


async def test_tls_refuses_a_server_certificate_from_another_ca(rsyslog_tls: Rsyslog, pki: Pki) -> None:
    sender = SyslogSender(url=rsyslog_tls.url, ca_file=pki.other_ca, cert_file=pki.client_cert,
                          key_file=pki.client_key)
    with pytest.raises(SyslogUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await sender.send([frame(b"<x/>", severity=5, **HEADER)])
    assert not sender.connected


async def test_tls_refuses_a_server_whose_name_is_not_the_urls_host(rsyslog_tls: Rsyslog, pki: Pki) -> None:
    sender = SyslogSender(url=f"tls://localhost:{rsyslog_tls.port}", ca_file=pki.ca, cert_file=pki.client_cert,
                          key_file=pki.client_key)  # the certificate names audit.test and 127.0.0.1 only
    with pytest.raises(SyslogUnavailable, match="Hostname mismatch"):
        await sender.send([frame(b"<x/>", severity=5, **HEADER)])


async def test_tls_without_a_client_certificate_is_refused_and_send_says_so(rsyslog_tls: Rsyslog, pki: Pki) -> None:
    sender = SyslogSender(url=rsyslog_tls.url, ca_file=pki.ca)
    for _ in range(2):
        with pytest.raises(SyslogUnavailable):
            await sender.send([frame(b"<x/>", severity=5, **HEADER)])
    time.sleep(0.3)
    assert rsyslog_tls.received() == []
