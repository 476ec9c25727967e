"""The audit shipper in a process of its own, beside the serving one (`AUDIT_SYSLOG_URL`).

Shipping costs CPU that the requests would otherwise wait for: reading the stored records back, writing each as
PS3.15 A.5.1 XML, sending, marking. In the serving process that work ran on the event loop between requests, and
its threads took turns with it for the GIL; measured on the bench's searches, it was more than half of the audit
trail's cost. So the gateway starts `run` (the `AuditShipper` with its own store connection and syslog sender) in
a child process, and all the serving process does is say "records were committed" through a pipe: one byte for
all the commits of 0.2 s, never waited for. The child reads the same database (SQLite's WAL lets it read while the
gateway writes; on PostgreSQL, leases with SKIP LOCKED), so a record committed by the gateway is shipped by the
child at least once, and what a killed child left leased goes again after its lease, as before.

Lifecycle: started by the lifespan after the journal, stopped after it (the child is told by the pipe's end of
file, finishes its batch and exits; after 10 s it is killed). A child that dies is started again, after a pause
that doubles up to a minute. When the serving process dies, the child sees the pipe's end of file too and exits:
the next gateway's child resumes from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog

from gateway.audit.shipper import AuditShipper, ShipPolicy, SyslogRendering
from gateway.audit.syslog import SyslogSender
from gateway.ops.logs import LogFormat, LogLevel, configure_logging
from gateway.store.audit import AuditStore
from gateway.store.db import create_engine

log = structlog.get_logger(__name__)
_STOP_TIMEOUT_S = 10.0
_RESTART_MAX_S = 60.0
# The child's scheduling priority: below the serving process, so that shipping takes the CPU the requests leave
# (the records are already stored; a second's delay to the repository costs nothing). Not 19: under a load that
# holds every core, a nice 10 process still gets about a tenth of a core's share against a nice 0 one, and keeps up.
NICENESS = 10


@dataclass(frozen=True, slots=True)
class ShipperConfig:
    """What the child needs to ship: all of it picklable, since the child is spawned, not forked."""

    database_url: str
    syslog_url: str
    rendering: SyslogRendering
    policy: ShipPolicy
    log_level: LogLevel
    log_format: LogFormat
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class ShipperProcess:
    """The parent's side: start, wake, watch and stop the shipping child."""

    def __init__(self, config: ShipperConfig, *, gather_s: float = 0.2) -> None:
        self._config = config
        self._gather_s = gather_s  # how long commits gather before the child is woken
        self._wake_due: asyncio.TimerHandle | None = None
        self._process: BaseProcess | None = None
        self._wakes: Connection | None = None  # the pipe's write end: a byte per wake, non-blocking
        self._stopping = False
        self._restart_s = 1.0
        self._restarting: asyncio.TimerHandle | None = None
        self.starts = 0  # how many children were started (the tests read it)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        self._stopping = False
        self._spawn()

    def wake(self) -> None:
        """Records were committed: the child is told within `gather_s`, once for all the commits meanwhile.

        Not at once: a write into the pipe wakes the child, and on this machine that write took 0.3 ms of the
        request that made it (the kernel switching to the reader), more than the record's commit."""
        if self._wake_due is None:
            self._wake_due = asyncio.get_running_loop().call_later(self._gather_s, self._send_wake)

    def _send_wake(self) -> None:
        self._wake_due = None
        if self._wakes is not None:
            # A full pipe means a wake is already pending: nothing is lost by dropping this one.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._wakes.fileno(), b"\0")

    async def stop(self) -> None:
        """Tell the child to stop (the pipe's end of file), wait for it to finish its batch, kill it after 10 s."""
        self._stopping = True
        for pending in (self._restarting, self._wake_due):
            if pending is not None:
                pending.cancel()
        self._wake_due = None
        process = self._process
        self._close_pipe()
        if process is None:
            return
        asyncio.get_running_loop().remove_reader(process.sentinel)  # no _exited for a child told to stop
        await asyncio.to_thread(process.join, _STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("audit_shipper_killed", timeout_s=_STOP_TIMEOUT_S)
            process.kill()
            await asyncio.to_thread(process.join, _STOP_TIMEOUT_S)
        process.close()
        self._process = None

    def _spawn(self) -> None:
        reader, writer = multiprocessing.Pipe(duplex=False)
        process = multiprocessing.get_context("spawn").Process(
            target=run, args=(self._config, reader), name="audit-shipper", daemon=True)
        process.start()
        reader.close()  # the child holds its own copy
        os.set_blocking(writer.fileno(), False)
        self._wakes = writer
        self._process = process
        self.starts += 1
        asyncio.get_running_loop().add_reader(process.sentinel, self._exited, process)
        self._send_wake()  # records committed while no child ran

    def _exited(self, process: BaseProcess) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        if self._stopping or process is not self._process:
            return
        process.join(1.0)  # its sentinel closed: it is exiting, and reaped within milliseconds
        if process.is_alive():
            process.kill()
            process.join(1.0)
        log.warning("audit_shipper_exited", exitcode=process.exitcode, restart_in_s=self._restart_s)
        process.close()
        self._process = None
        self._close_pipe()
        self._restarting = loop.call_later(self._restart_s, self._restart)
        self._restart_s = min(_RESTART_MAX_S, self._restart_s * 2)

    def _restart(self) -> None:
        self._restarting = None
        if not self._stopping:
            self._spawn()

    def _close_pipe(self) -> None:
        if self._wakes is not None:
            self._wakes.close()
            self._wakes = None


def run(config: ShipperConfig, wakes: Connection) -> None:
    """The child's body: ship until the parent closes the pipe (or goes away), or SIGTERM."""
    os.nice(NICENESS)
    configure_logging(config.log_level, config.log_format)
    asyncio.run(_ship(config, wakes))


async def _ship(config: ShipperConfig, wakes: Connection) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    engine = create_engine(config.database_url)
    store = AuditStore(engine)
    sender = SyslogSender(url=config.syslog_url, ca_file=config.ca_file, cert_file=config.cert_file,
                          key_file=config.key_file)
    shipper = AuditShipper(store=store, render=config.rendering, send=sender.send, policy=config.policy)

    def on_wake() -> None:
        try:
            got = os.read(wakes.fileno(), 4096)
        except BlockingIOError:
            return
        if got:
            shipper.wake()
        else:  # end of file: the gateway stopped, or died
            loop.remove_reader(wakes.fileno())
            done.set()

    os.set_blocking(wakes.fileno(), False)
    loop.add_reader(wakes.fileno(), on_wake)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the parent's to handle
    await shipper.start()
    try:
        await done.wait()
    finally:
        await shipper.stop()
        await sender.aclose()
        await store.close()
        await engine.dispose()
        wakes.close()
