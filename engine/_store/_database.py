"""Connection to the store: engine creation, dialect differences, schema creation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from sqlalchemy import event, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from engine._settings import DEFAULT_DATABASE_URL
from engine._store import _schema as schema
from engine._store._driver import ABORT_FUNCTION
from sdk.errors import EngineUnavailableError, ValidationError

log = structlog.get_logger("warren.store")

#: How long closing waits for the driver pool's connections to be given back.
_DRIVER_POOL_CLOSE_S = 10.0

#: Keys of SQLAlchemy's asyncpg connect arguments that its adapter takes, not asyncpg.
_ADAPTER_ONLY_ARGS = ("prepared_statement_cache_size", "prepared_statement_name_func",
                      "async_creator_fn")


class Database:
    """An async SQLAlchemy engine on PostgreSQL (asyncpg) or SQLite (aiosqlite).

    SQLite runs in WAL mode with a busy timeout so a worker and a client can share the file;
    writers are serialized by a process-local lock because SQLite allows one writer at a time
    and aiosqlite would otherwise fail with "database is locked" under load.
    """

    def __init__(self, url: str | None = None, *, pool_size: int = 10) -> None:
        self.url = url or DEFAULT_DATABASE_URL
        if self.url.startswith("sqlite"):
            self.dialect = "sqlite"
            self.engine: AsyncEngine = create_async_engine(
                self.url, connect_args={"timeout": 30}
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        elif self.url.startswith("postgresql+asyncpg"):
            self.dialect = "postgresql"
            self.engine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False
            )
        else:
            raise ValidationError(
                f"unsupported database URL {self.url!r}: use postgresql+asyncpg://... "
                "or sqlite+aiosqlite:///path"
            )
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._pool_size = pool_size
        self._driver_pool: asyncpg.Pool | None = None
        self._driver_pool_lock = asyncio.Lock()

    async def create_schema(self) -> None:
        """Create missing tables and seed fixed rows. Safe to run from many workers at once."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Serialize concurrent start-ups: CREATE TABLE IF NOT EXISTS races in PostgreSQL.
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724011)")
            await conn.run_sync(SQLModel.metadata.create_all)
            if self.dialect == "postgresql":
                await conn.exec_driver_sql(ABORT_FUNCTION)
            await _insert_missing(conn, schema.meta, {"key": "schema_version"},
                                  {"value": str(schema.SCHEMA_VERSION)})
            found = (await conn.execute(select(schema.meta.c.value).where(
                schema.meta.c.key == "schema_version"))).scalar()
            if found != str(schema.SCHEMA_VERSION):
                raise EngineUnavailableError(
                    f"the database {_safe(self.url)} has Warren schema version {found}, this "
                    f"release needs {schema.SCHEMA_VERSION}; there is no automatic migration "
                    "between pre-release schemas: use a new database (or delete the SQLite file)"
                )


    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction, committed on success."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection from a small pool of its own, outside SQLAlchemy
        (PostgreSQL), on which each statement is its own transaction: for the one-statement
        writes of the hot path. There, SQLAlchemy's execution context, its pool checkout and
        the switch to autocommit cost more Python than the round trip itself (0.8 ms of a
        2.7 ms turn write, measured; ``benchmarks/README.md``, change 26)."""
        if self.dialect != "postgresql":
            raise RuntimeError("driver connections are used on PostgreSQL only")
        pool = self._driver_pool or await self._open_driver_pool()
        async with pool.acquire() as conn:
            yield conn

    async def _open_driver_pool(self) -> asyncpg.Pool:
        async with self._driver_pool_lock:
            if self._driver_pool is None:
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                for key in _ADAPTER_ONLY_ARGS:
                    kwargs.pop(key, None)
                self._driver_pool = await asyncpg.create_pool(
                    *args, **kwargs, min_size=1, max_size=self._pool_size,
                    reset=_session_unchanged)
            return self._driver_pool

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (no write lock on SQLite)."""
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        pool, self._driver_pool = self._driver_pool, None
        try:
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), _DRIVER_POOL_CLOSE_S)
                except TimeoutError:  # a connection still checked out: close it hard
                    pool.terminate()
        finally:
            await self.engine.dispose()


async def _session_unchanged(conn: asyncpg.Connection) -> None:
    """The driver pool's reset: none. asyncpg's default resets a returned connection with a
    round trip (``RESET ALL``, ``UNLISTEN *``, …) that the statements run here never need:
    each is its own transaction and leaves no session state."""


async def _insert_missing(
    conn: AsyncConnection, table: Any, key: dict[str, Any], values: dict[str, Any]
) -> None:
    (column, value), = key.items()
    exists = (await conn.execute(select(table).where(table.c[column] == value))).first()
    if exists is None:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(table).values(**key, **values))
        except IntegrityError:
            pass  # another worker seeded it between our check and insert


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _safe(url: str) -> str:
    return url.split("@", 1)[-1] if "@" in url else url
