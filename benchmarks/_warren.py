"""Warren under test: a client, a store probe, and workers, isolated per run.

Two shapes:

- ``warren``: RabbitMQ + PostgreSQL, workers as separate ``warren worker`` processes (what
  production runs), a fresh database and vhost per run.
- ``warren-embedded``: the embedded in-process broker + SQLite. The embedded broker lives in
  the process, so worker and client share it by construction: that is the deployment
  ``warren dev`` gives a user with nothing installed.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks import workflows as bench_workflows
from benchmarks._isolation import Services, fresh_broker, fresh_database, sqlalchemy_url
from benchmarks._probe import PgProbe, Probe, SqliteProbe
from benchmarks._procs import ProcessGroup, python
from engine import Worker
from engine._loader import workflows_in
from sdk import Client

ENGINES = ("warren", "warren-embedded")
READY_MARKER = "worker started"


@dataclass
class WarrenTarget:
    """One isolated Warren deployment for one benchmark run."""

    engine: str
    client: Client
    probe: Probe
    env: dict[str, str]
    log_dir: Path
    workers: ProcessGroup | None = None
    _embedded: Worker | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.engine == "warren-embedded"

    async def start_workers(self, count: int) -> None:
        """Start ``count`` worker processes (embedded: the one in-process worker)."""
        if self.embedded:
            if self._embedded is None:
                self._embedded = Worker(
                    workflows_in([bench_workflows]), broker_url=self.env["WARREN_BROKER_URL"],
                    database_url=self.env["WARREN_DATABASE_URL"],
                    namespace=self.env["WARREN_NAMESPACE"],
                )
                await self._embedded.start()
            return
        group = ProcessGroup("warren-worker", self.log_dir)
        group.start([python(), "-m", "engine._cli", "worker", "benchmarks.workflows"],
                    {**self.env, "WARREN_LOG_LEVEL": "INFO"}, count)
        self.workers = group
        await group.wait_ready(READY_MARKER)

    async def stop_workers(self) -> None:
        if self._embedded is not None:
            await self._embedded.close()
            self._embedded = None
        if self.workers is not None:
            self.workers.stop()
            self.workers = None

    def check_workers(self) -> None:
        """Fail fast if a worker process died (its log tail is in the error)."""
        if self.workers is not None:
            self.workers.check_alive()

    def worker_rss_bytes(self) -> int:
        """Resident memory of the workers (embedded: this whole process)."""
        if self.embedded:
            return int(psutil.Process().memory_info().rss)
        return self.workers.rss_bytes() if self.workers is not None else 0

    def worker_cpu_seconds(self) -> float:
        if self.embedded:
            t = psutil.Process().cpu_times()
            return float(t.user + t.system)
        return self.workers.cpu_seconds() if self.workers is not None else 0.0


@asynccontextmanager
async def warren_target(
    engine: str, services: Services, log_dir: Path, workers: int = 0
) -> AsyncIterator[WarrenTarget]:
    """A fresh deployment; ``workers`` processes are started before it is yielded."""
    if engine not in ENGINES:
        raise ValueError(f"unknown Warren engine {engine!r}")
    async with AsyncExitStack() as stack:
        namespace = f"bench{secrets.token_hex(4)}"
        if engine == "warren":
            dsn = await stack.enter_async_context(fresh_database(services.pg_admin_dsn))
            broker = await stack.enter_async_context(fresh_broker(services.amqp_url))
            env = {"WARREN_BROKER_URL": broker.url, "WARREN_DATABASE_URL": sqlalchemy_url(dsn),
                   "WARREN_NAMESPACE": broker.namespace}
        else:
            db_path = log_dir / f"{namespace}.db"
            env = {"WARREN_BROKER_URL": f"memory://{namespace}",
                   "WARREN_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
                   "WARREN_NAMESPACE": namespace}
        client = Client(broker_url=env["WARREN_BROKER_URL"],
                        database_url=env["WARREN_DATABASE_URL"],
                        namespace=env["WARREN_NAMESPACE"])
        await client.connect()  # creates the schema, so the probe can read at once
        stack.push_async_callback(client.close)
        probe: Probe = (await PgProbe.connect(dsn) if engine == "warren"
                        else SqliteProbe(str(db_path)))
        stack.push_async_callback(probe.close)
        target = WarrenTarget(engine, client, probe, env, log_dir)
        stack.push_async_callback(target.stop_workers)
        if workers:
            await target.start_workers(workers)
        yield target
