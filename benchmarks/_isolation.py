"""Per-run isolation: a fresh PostgreSQL database and a fresh RabbitMQ vhost, always removed.

Why per run: a reused database measures the previous run's bloat (dead tuples, grown
indexes), and a shared vhost lets a crashed run's leftover messages be consumed by the next
one. Creating both takes about a second, which is noise next to a run. Cleanup happens in
``finally`` blocks, so a failing or interrupted (Ctrl-C, SIGTERM) run still removes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("benchmarks")

DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True, slots=True)
class Services:
    """Where the shared servers are (env ``WARREN_BENCH_PG_ADMIN_DSN`` / ``WARREN_BENCH_AMQP_URL``).

    Attributes:
        pg_admin_dsn: A libpq DSN of a maintenance database on the server (``postgres``),
            used only to create and drop the per-run databases.
        amqp_url: The broker URL without a vhost; each run gets its own vhost on it.
    """

    pg_admin_dsn: str = DEFAULT_PG_ADMIN_DSN
    amqp_url: str = DEFAULT_AMQP_URL

    @classmethod
    def from_env(cls) -> Services:
        return cls(
            pg_admin_dsn=os.environ.get("WARREN_BENCH_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN,
            amqp_url=os.environ.get("WARREN_BENCH_AMQP_URL") or DEFAULT_AMQP_URL,
        )


@dataclass(frozen=True, slots=True)
class Broker:
    """A RabbitMQ place private to one run: a vhost, or (without rabbitmqctl) a namespace."""

    url: str
    namespace: str
    vhost: str | None


def database_dsn(admin_dsn: str, database: str) -> str:
    """The libpq DSN of ``database`` on the admin DSN's server (query string dropped)."""
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path=f"/{quote(database)}", query=""))


def sqlalchemy_url(dsn: str, driver: str = "asyncpg") -> str:
    """``postgresql://...`` as a SQLAlchemy URL with an explicit driver."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(scheme=f"postgresql+{driver}"))


def vhost_url(amqp_url: str, vhost: str) -> str:
    """The broker URL pointing at ``vhost`` (percent-encoded, as AMQP URLs require)."""
    parts = urlsplit(amqp_url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@asynccontextmanager
async def fresh_database(admin_dsn: str, prefix: str = "warren_bench") -> AsyncIterator[str]:
    """Create an empty database, yield its DSN, drop it (terminating leftover sessions)."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield database_dsn(admin_dsn, name)
    finally:
        await _drop_database(admin_dsn, name)


async def _drop_database(admin_dsn: str, name: str) -> None:
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
    except Exception as exc:
        log.error("could not connect to drop benchmark database %s: %r", name, exc)
        return
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:
        log.error("dropping benchmark database %s failed: %r", name, exc)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_broker(amqp_url: str) -> AsyncIterator[Broker]:
    """A private vhost (deleted afterwards) or, where rabbitmqctl is missing, a namespace.

    A vhost is preferred: deleting it removes every queue and message the run created,
    whatever state the run died in. The namespace fallback isolates names only.
    """
    token = secrets.token_hex(5)
    namespace = f"bench{token}"
    if shutil.which("rabbitmqctl") is None:
        log.warning("rabbitmqctl not found: isolating by namespace %s on the default vhost",
                    namespace)
        yield Broker(amqp_url, namespace, None)
        return
    vhost = f"warren-bench-{token}"
    user = urlsplit(amqp_url).username or "guest"
    await _rabbitmqctl("add_vhost", vhost)
    try:
        await _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield Broker(vhost_url(amqp_url, vhost), namespace, vhost)
    finally:
        try:
            await _rabbitmqctl("delete_vhost", vhost)
        except Exception as exc:
            log.error("deleting benchmark vhost %s failed: %r", vhost, exc)


async def _rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode().strip()}")
