"""Stacks under test. The engine integration suite runs on every stack (RabbitMQ + PostgreSQL
and the embedded broker + SQLite), so the two cannot drift apart."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from sqlmodel import SQLModel

import engine._store._schema  # noqa: F401  (registers the tables in SQLModel.metadata)
from broker import broker_from_url
from engine import Worker
from sdk import Client, WorkflowEntrypoint
from tests.conftest import LeftoverTestResourceWarning
from tests.helpers import asyncpg_dsn

WARREN_TABLES = tuple(t.name for t in SQLModel.metadata.sorted_tables)


@dataclass
class Stack:
    """Where a test's workers and clients connect."""

    name: str
    broker_url: str
    database_url: str
    namespace: str

    @property
    def env(self) -> dict[str, str]:
        return {"WARREN_BROKER_URL": self.broker_url, "WARREN_DATABASE_URL": self.database_url,
                "WARREN_NAMESPACE": self.namespace}

    def worker(self, workflows: Iterable[type[WorkflowEntrypoint]], **overrides: Any) -> Worker:
        overrides.setdefault("sweep_interval_s", 0.2)
        overrides.setdefault("sweep_grace_s", 0.5)
        return Worker(workflows, broker_url=self.broker_url, database_url=self.database_url,
                      namespace=self.namespace, **overrides)

    def client(self) -> Client:
        return Client(broker_url=self.broker_url, database_url=self.database_url,
                      namespace=self.namespace)

    @asynccontextmanager
    async def running(
        self, workflows: Iterable[type[WorkflowEntrypoint]], **overrides: Any
    ) -> AsyncIterator[Client]:
        """A started worker and a connected client."""
        async with self.worker(workflows, **overrides), self.client() as client:
            yield client


async def _truncate(database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        existing = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        tables = [t for t in WARREN_TABLES if t in existing]
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
    finally:
        await conn.close()


@pytest.fixture(params=["rabbitmq-postgres", "memory-sqlite"])
def stack(request: pytest.FixtureRequest, namespace: str, sqlite_url: str) -> Iterator[Stack]:
    """Each test once on RabbitMQ + PostgreSQL, once on the embedded broker + SQLite."""
    if request.param == "memory-sqlite":
        yield Stack(request.param, f"memory://{namespace}", sqlite_url, namespace)
        return
    # Sync on purpose: async session fixtures can only be pulled lazily from a sync fixture.
    yield from _real_stack(request.getfixturevalue("rabbit_url"),
                           request.getfixturevalue("postgres_url"), namespace)


@pytest.fixture
def real_stack(namespace: str, rabbit_url: str, postgres_url: str) -> Iterator[Stack]:
    """RabbitMQ + PostgreSQL only: for tests with several worker processes."""
    yield from _real_stack(rabbit_url, postgres_url, namespace)


def _real_stack(rabbit_url: str, postgres_url: str, namespace: str) -> Iterator[Stack]:
    asyncio.run(_truncate(postgres_url))
    yield Stack("rabbitmq-postgres", rabbit_url, postgres_url, namespace)
    asyncio.run(_delete_namespace(rabbit_url, postgres_url, namespace))
    asyncio.run(_truncate(postgres_url))


async def _delete_namespace(rabbit_url: str, postgres_url: str, namespace: str) -> None:
    """Delete the queues and exchanges a test's namespace declared in the session's vhost.

    Every namespace declares about 30 queues (delay levels, dead letters, one per
    workflow). Left in place they add up to thousands in one session, which slows
    RabbitMQ down for every later test and made deleting the vhost at the end take
    longer than the last test's timeout.
    """
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        names = [r["name"] for r in await conn.fetch(
            "SELECT name FROM warren_workflows UNION SELECT DISTINCT workflow "
            "FROM warren_instances")]
    except asyncpg.UndefinedTableError:  # the test never created the schema
        names = []
    finally:
        await conn.close()
    try:
        async with broker_from_url(rabbit_url, namespace) as broker:
            await broker.delete_topology(names)  # type: ignore[attr-defined]
    except Exception as exc:  # a leftover must not fail the test that left it
        warnings.warn(f"could not delete namespace {namespace!r}: {exc!r}",
                      LeftoverTestResourceWarning, stacklevel=1)
