"""The gateway's own store (callback events and their deliveries): SQLAlchemy async over SQLite or PostgreSQL.

`DATABASE_URL` picks the database: `sqlite:///path` (the default, a file under `./data/`) or `postgresql://...`;
the async drivers (aiosqlite, asyncpg) are filled in here. The schema is created or migrated with Alembic at start
(`migrate`); on PostgreSQL, replicas starting together take an advisory lock so that one migrates at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import Table, bindparam, event, text
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

T = TypeVar("T")
_NAMED_PARAMETERS = pysqlite.dialect(paramstyle="named")  # `:name`, as sqlite3 takes a row's mapping
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x64636D67  # "dcmg": the PostgreSQL advisory lock taken while migrating


def async_url(url: str) -> str:
    """The URL with the async driver of its database: sqlite → sqlite+aiosqlite, postgresql → +asyncpg."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r}: use sqlite:///... or postgresql://...")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url`. SQLite: the file's directory is created, WAL journal, foreign keys, a busy timeout."""
    full = async_url(url)
    parsed = make_url(full)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(full, connect_args={"timeout": 30})
        _sqlite_transactions(engine.sync_engine)
        return engine
    return create_async_engine(full, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _sqlite_transactions(engine: Engine, *, synced: bool = True) -> None:
    """The SQLite settings every connection of `engine` gets, and BEGIN IMMEDIATE for every transaction.

    `synced`: each commit waits for the disk (`synchronous=FULL`: it survives a power cut); otherwise it is written
    into the log without an fsync (`NORMAL`: it survives the process, not the host)."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: object, _record: object) -> None:
        # pysqlite's own BEGIN handling off, so that the BEGIN IMMEDIATE below is the only one (SQLAlchemy's
        # recipe for SQLite transactions).
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        # WAL: readers do not block the writer.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if synced else 'NORMAL'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _immediate(connection: Connection) -> None:
        # Take the write lock at BEGIN: a read-then-write transaction cannot fail half-way with "database locked".
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class SqliteWriter:
    """Write transactions on an SQLite file, each run whole in one thread of its own: one hand-over per transaction.

    Through aiosqlite every statement, the BEGIN and the COMMIT each cross to the driver's thread and back (about
    2.5 ms for a one-row transaction here, against 0.7 ms for the same transaction in one call). A writer that
    commits on every request's path (the audit journal) gives each transaction to this thread instead, as a function
    of a synchronous `Connection` (stdlib sqlite3, the same settings). One thread also means its transactions take
    turns in the order they came, and never wait in SQLite's busy handler for each other.
    """

    def __init__(self, engine: AsyncEngine, *, synced: bool = True) -> None:
        url = engine.url.set(drivername="sqlite+pysqlite")
        self._engine = sqlalchemy.create_engine(url, connect_args={"timeout": 30})
        _sqlite_transactions(self._engine, synced=synced)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._raw: Any = None  # the DB-API connection of `insert`, opened in the writer's thread
        self._closed = False

    @staticmethod
    def serves(engine: AsyncEngine) -> bool:
        """Whether `engine` is an SQLite file (an in-memory database is one per connection: not shared)."""
        return is_sqlite(engine) and engine.url.database not in (None, "", ":memory:")

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, work)

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        with self._engine.begin() as connection:
            return work(connection)

    async def insert(self, table: Table, rows: Sequence[Mapping[str, object]]) -> list[int]:
        """Insert `rows` into `table` in one transaction; their ids, in order.

        The statement is compiled once per table and columns, and run for each row on a DB-API connection the writer
        keeps: SQLAlchemy's connection checkout, reset and result handling cost about 0.5 ms of CPU a transaction,
        four times what SQLite itself takes, and this is the insert each audited request waits for."""
        if not rows:
            return []
        sql = insert_sql(table, tuple(rows[0]))  # every row has the same columns
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, sql, rows)

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file (`PRAGMA wal_checkpoint(PASSIVE)`), in the thread."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._checkpoint)

    def _checkpoint(self) -> None:
        self._kept().cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()

    def _insert(self, sql: str, rows: Sequence[Mapping[str, object]]) -> list[int]:
        try:
            return insert_rows(self._kept().cursor(), sql, rows)
        except BaseException:
            self._discard()  # whatever failed (a full disk, a lost file), the next batch starts on a new connection
            raise

    def _kept(self) -> Any:
        """The DB-API connection this thread keeps: the connect event's settings (WAL, the sync, no auto-BEGIN)."""
        if self._raw is None:
            self._raw = self._engine.raw_connection()
        return self._raw

    def _discard(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None

    def close(self) -> None:
        """Close the kept connection in its thread, end the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._discard).result()
        self._thread.shutdown(wait=True)
        self._engine.dispose()


@cache
def insert_sql(table: Table, columns: tuple[str, ...]) -> str:
    """`INSERT INTO table (columns) VALUES (:column, ...) RETURNING id`, compiled once per table and columns."""
    statement = table.insert().values({name: bindparam(name) for name in columns}).returning(table.c.id)
    return str(statement.compile(dialect=_NAMED_PARAMETERS))


def insert_rows(cursor: Any, sql: str, rows: Sequence[Mapping[str, object]]) -> list[int]:
    """Run `sql` (an `insert_sql`) for each row in one `BEGIN IMMEDIATE` transaction on a DB-API cursor; the ids.
    A failure rolls back and raises; `SqliteBusy` when the write lock could not be taken, nothing run."""
    try:
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise SqliteBusy from exc
            raise
        try:
            ids = []
            for row in rows:
                cursor.execute(sql, row)
                ids.append(int(cursor.fetchone()[0]))
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cursor.execute("ROLLBACK")
            raise
        return ids
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


class SqliteBusy(Exception):
    """Another connection holds SQLite's write lock: the transaction was not run."""


class InlineSqlite:
    """Short write transactions on the event loop itself, on a connection that never waits for a lock.

    With `synchronous=NORMAL` in WAL mode a commit is a write into the log, no fsync (tens of microseconds): a
    committed transaction survives the gateway's crash or kill, since the data is in the kernel's hands, but the
    last ones before a power cut or a kernel crash may be lost (SQLite syncs the log at each checkpoint). That is
    cheap enough to run where the caller is, with none of a thread's hand-overs. It must never block the loop, so
    its busy timeout is 0: when another connection holds the write lock, `SqliteBusy` says to run it elsewhere.
    Checkpoints are not run here either (`wal_autocheckpoint=0`): the owner runs them off the loop.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    def insert(self, table: Table, rows: Sequence[Mapping[str, object]]) -> list[int]:
        if not rows:
            return []
        try:
            return insert_rows(self._connect().cursor(), insert_sql(table, tuple(rows[0])), rows)
        except SqliteBusy:
            raise  # the connection is fine: the lock was another's
        except BaseException:
            self.close()  # whatever failed, the next transaction starts on a new connection
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self._path, isolation_level=None, timeout=0, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=0",
                           "wal_autocheckpoint=0"):
                connection.execute(f"PRAGMA {pragma}")
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Create or upgrade the schema to the newest revision (idempotent)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
