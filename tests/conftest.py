"""Fixtures shared by every test suite.

Session fixtures provision real, isolated backing services:

* ``postgres_url``: a fresh PostgreSQL database, dropped at the end.
* ``rabbit_url``: a fresh RabbitMQ virtual host, deleted at the end (or the
  default vhost ``/`` when ``rabbitmqctl`` cannot be used; tests then rely on
  ``namespace`` for isolation).

When a service is unreachable, tests that need it are skipped locally and fail
in CI (``CI=true``), so that a broken CI machine never passes silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import asyncpg
import pytest
import pytest_asyncio

from tests.helpers import in_ci, redact_url

logger = logging.getLogger("tests.conftest")

#: Environment variable that overrides the PostgreSQL admin DSN.
POSTGRES_ADMIN_DSN_ENV = "WARREN_TEST_POSTGRES_ADMIN_DSN"
DEFAULT_POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672
RABBIT_USER = "guest"
RABBIT_PASSWORD = "guest"
RABBIT_DEFAULT_VHOST = "/"

#: Seconds allowed for connecting to a service or running one rabbitmqctl command.
CONNECT_TIMEOUT = 10.0
RABBITMQCTL_TIMEOUT = 60.0


class LeftoverTestResourceWarning(UserWarning):
    """A database or vhost created for the tests could not be removed."""


def _service_unavailable(service: str, reason: str) -> NoReturn:
    """Skip the requesting test locally, fail it in CI.

    Args:
        service: Human-readable service name, e.g. ``"PostgreSQL"``.
        reason: Why the service cannot be used.

    Raises:
        pytest.skip.Exception: When not running in CI.
        pytest.fail.Exception: When running in CI.
    """
    text = f"{service} unavailable: {reason}"
    if in_ci():
        pytest.fail(f"{text} (services are mandatory when CI=true)", pytrace=False)
    pytest.skip(text)


def _report_leftover(text: str) -> None:
    """Log and warn about a test resource that survived its teardown.

    Args:
        text: Description of the leftover resource.
    """
    logger.error(text)
    warnings.warn(text, LeftoverTestResourceWarning, stacklevel=2)


# --------------------------------------------------------------------------- #
# Generic function-scoped fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture
def namespace() -> str:
    """Return a unique namespace for isolating broker objects between tests.

    Returns:
        A string ``t<8 hex digits>``.
    """
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """Return a SQLAlchemy URL for a SQLite database private to the test.

    Args:
        tmp_path: pytest's per-test temporary directory.

    Returns:
        ``sqlite+aiosqlite:///<tmp_path>/warren.db``.
    """
    return f"sqlite+aiosqlite:///{tmp_path / 'warren.db'}"


# --------------------------------------------------------------------------- #
# PostgreSQL
# --------------------------------------------------------------------------- #


def _postgres_admin_dsn() -> str:
    """Return the DSN used to create and drop test databases.

    Returns:
        ``$WARREN_TEST_POSTGRES_ADMIN_DSN`` or the local default.
    """
    return os.environ.get(POSTGRES_ADMIN_DSN_ENV) or DEFAULT_POSTGRES_ADMIN_DSN


def _postgres_url_for(admin_dsn: str, database: str) -> str:
    """Build the SQLAlchemy URL of ``database`` on the admin DSN's server.

    Args:
        admin_dsn: A ``postgresql://`` DSN; its user, password, host and port
            are kept, its query string (asyncpg-specific options) is dropped.
        database: Name of the database to point at.

    Returns:
        A ``postgresql+asyncpg://`` URL, e.g.
        ``postgresql+asyncpg://postgres@127.0.0.1:5432/warren_test_ab12``.
    """
    parts = urlsplit(admin_dsn)
    return urlunsplit(
        parts._replace(scheme="postgresql+asyncpg", path=f"/{quote(database)}", query="")
    )


async def _postgres_connect(dsn: str) -> asyncpg.Connection:
    """Connect to PostgreSQL, turning connection failures into skip/fail.

    Args:
        dsn: asyncpg DSN.

    Returns:
        An open connection.
    """
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _service_unavailable("PostgreSQL", f"cannot connect to {redact_url(dsn)}: {exc!r}")


async def _drop_postgres_database(admin_dsn: str, database: str) -> None:
    """Drop a test database, then check that it is gone.

    Leftover connections are terminated first. Problems are logged and
    reported as :class:`LeftoverTestResourceWarning`; they never raise.

    Args:
        admin_dsn: DSN of a maintenance database on the same server.
        database: Name of the database to drop.
    """
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        _report_leftover(f"could not connect to drop test database {database!r}: {exc!r}")
        return
    try:
        ident = '"' + database.replace('"', '""') + '"'
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            try:
                await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
            except asyncpg.PostgresSyntaxError:  # PostgreSQL < 13 has no FORCE
                await conn.execute(f"DROP DATABASE IF EXISTS {ident}")
        except Exception as exc:
            logger.error("dropping test database %r failed: %r", database, exc)
        still_there = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", database
        )
        if still_there:
            _report_leftover(f"test database {database!r} still exists after teardown")
        else:
            logger.info("dropped test database %r", database)
    except Exception as exc:
        _report_leftover(f"could not verify removal of test database {database!r}: {exc!r}")
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """Create a fresh PostgreSQL database for the session.

    The admin DSN is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless
    ``WARREN_TEST_POSTGRES_ADMIN_DSN`` overrides it.

    Yields:
        A SQLAlchemy URL, ``postgresql+asyncpg://postgres@127.0.0.1:5432/warren_test_<hex>``.
        Use :func:`tests.helpers.asyncpg_dsn` to get a plain asyncpg DSN.
    """
    admin_dsn = _postgres_admin_dsn()
    database = f"warren_test_{secrets.token_hex(6)}"
    conn = await _postgres_connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    logger.info("created test database %r", database)
    try:
        yield _postgres_url_for(admin_dsn, database)
    finally:
        await _drop_postgres_database(admin_dsn, database)


# --------------------------------------------------------------------------- #
# RabbitMQ
# --------------------------------------------------------------------------- #


class RabbitmqctlError(RuntimeError):
    """``rabbitmqctl`` is missing, failed or timed out."""


async def _rabbitmqctl(*args: str) -> str:
    """Run one ``rabbitmqctl`` command.

    Args:
        *args: Command and arguments, e.g. ``"add_vhost", "name"``.

    Returns:
        The command's combined stdout and stderr.

    Raises:
        RabbitmqctlError: If ``rabbitmqctl`` is not on PATH, exits non-zero or
            takes longer than ``RABBITMQCTL_TIMEOUT`` seconds.
    """
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise RabbitmqctlError("rabbitmqctl not found on PATH")
    proc = await asyncio.create_subprocess_exec(
        exe,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RABBITMQCTL_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RabbitmqctlError(
            f"rabbitmqctl {' '.join(args)} timed out after {RABBITMQCTL_TIMEOUT:g}s"
        ) from None
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise RabbitmqctlError(f"rabbitmqctl {' '.join(args)} exited {proc.returncode}: {text}")
    return text


def _rabbit_url_for(vhost: str) -> str:
    """Build the AMQP URL of a vhost on the local broker.

    Args:
        vhost: Virtual host name (URL-encoded in the result, ``/`` becomes ``%2F``).

    Returns:
        ``amqp://guest:guest@127.0.0.1:5672/<vhost>``.
    """
    return (
        f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@{RABBIT_HOST}:{RABBIT_PORT}/"
        f"{quote(vhost, safe='')}"
    )


async def _probe_rabbit_port() -> None:
    """Check that the AMQP port accepts TCP connections, or skip/fail."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(RABBIT_HOST, RABBIT_PORT), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        _service_unavailable("RabbitMQ", f"{RABBIT_HOST}:{RABBIT_PORT} unreachable: {exc!r}")
    writer.close()
    await writer.wait_closed()


async def _create_vhost(vhost: str) -> bool:
    """Create ``vhost`` and give ``guest`` full permissions on it.

    Args:
        vhost: Name of the virtual host to create.

    Returns:
        True on success; False when ``rabbitmqctl`` is unusable (e.g. not root),
        in which case nothing is left behind.
    """
    try:
        await _rabbitmqctl("add_vhost", vhost)
    except RabbitmqctlError as exc:
        logger.warning("cannot create a RabbitMQ vhost, using %r: %s", RABBIT_DEFAULT_VHOST, exc)
        return False
    try:
        await _rabbitmqctl("set_permissions", "-p", vhost, RABBIT_USER, ".*", ".*", ".*")
    except RabbitmqctlError as exc:
        logger.warning("cannot set permissions on vhost %r: %s", vhost, exc)
        await _delete_vhost(vhost)
        return False
    return True


async def _list_vhosts() -> list[str]:
    """Return the names of all vhosts of the local broker.

    Returns:
        Vhost names.

    Raises:
        RabbitmqctlError: If ``rabbitmqctl`` fails.
    """
    out = await _rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers", "name")
    return [line.strip() for line in out.splitlines() if line.strip()]


async def _delete_vhost(vhost: str) -> None:
    """Delete a test vhost, then check that it is gone.

    Problems are logged and reported as :class:`LeftoverTestResourceWarning`;
    they never raise.

    Args:
        vhost: Name of the virtual host to delete.
    """
    try:
        await _rabbitmqctl("delete_vhost", vhost)
    except RabbitmqctlError as exc:
        logger.error("deleting test vhost %r failed: %s", vhost, exc)
    try:
        remaining = await _list_vhosts()
    except RabbitmqctlError as exc:
        _report_leftover(f"could not verify removal of test vhost {vhost!r}: {exc}")
        return
    if vhost in remaining:
        _report_leftover(f"test vhost {vhost!r} still exists after teardown")
    else:
        logger.info("deleted test vhost %r", vhost)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rabbit_url() -> AsyncIterator[str]:
    """Create a fresh RabbitMQ vhost for the session.

    Falls back to the default vhost ``/`` when ``rabbitmqctl`` is not usable
    (typically: not running as root); tests isolate themselves with the
    ``namespace`` fixture in that case.

    Yields:
        ``amqp://guest:guest@127.0.0.1:5672/<vhost>`` with the vhost
        URL-encoded; the vhost is ``warren-test-<hex>`` or ``/``.
    """
    await _probe_rabbit_port()
    vhost = f"warren-test-{secrets.token_hex(6)}"
    created = await _create_vhost(vhost)
    if not created:
        vhost = RABBIT_DEFAULT_VHOST
    url = _rabbit_url_for(vhost)
    try:
        try:
            connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            _service_unavailable("RabbitMQ", f"cannot connect to {redact_url(url)}: {exc!r}")
        await connection.close()
        logger.info("using RabbitMQ vhost %r", vhost)
        yield url
    finally:
        if created:
            await _delete_vhost(vhost)


# Stack fixtures (which broker + store a test runs on) live beside their Stack class.
from tests.stacks import real_stack, stack  # noqa: E402, F401
