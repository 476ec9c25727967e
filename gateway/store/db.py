"""The gateway's own store (callback events and their deliveries): SQLAlchemy async over SQLite or PostgreSQL.

`DATABASE_URL` picks the database: `sqlite:///path` (the default, a file under `./data/`) or `postgresql://...`;
the async drivers (aiosqlite, asyncpg) are filled in here. The schema is created or migrated with Alembic at start
(`migrate`); on PostgreSQL, replicas starting together take an advisory lock so that one migrates at a time.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: object, _record: object) -> None:
            # pysqlite's own BEGIN handling off, so that the BEGIN IMMEDIATE below is the only one (SQLAlchemy's
            # recipe for SQLite transactions).
            dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # WAL: readers do not block the writer; synchronous=FULL: a committed event survives a power cut.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _immediate(connection: Connection) -> None:
            # Take the write lock at BEGIN: a read-then-write transaction cannot fail half-way with "database locked".
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_async_engine(full, pool_size=10, max_overflow=10, pool_pre_ping=True)


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
