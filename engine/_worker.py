"""The engine worker: consumes its workflows' queues and advances their instances."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import structlog

from broker import Broker, Consumer, broker_from_url
from engine._clock import now_ms
from engine._lifecycle import LifecycleEvents
from engine._runner import StepRunner
from engine._settings import Settings
from engine._store._database import Database
from engine._store._gates import GateConfig, configure_txn
from engine._store._instances import ensure_workflows_txn
from engine._sweeper import Sweeper
from engine._turn_loop import TurnLoop, unroutable_handler
from sdk._workflow import WorkflowEntrypoint
from sdk.errors import ValidationError

log = structlog.get_logger("warren.worker")


class Worker:
    """Serves workflows: ``async with Worker(workflows=[...]) as worker: ...`` or ``await run()``.

    Args:
        workflows: The ``WorkflowEntrypoint`` subclasses to serve.
        broker_url: Overrides ``WARREN_BROKER_URL``.
        database_url: Overrides ``WARREN_DATABASE_URL``.
        settings: Full settings (``Settings.from_env()`` by default); keyword overrides win.
        **overrides: Any :class:`engine.Settings` field.
    """

    def __init__(
        self, workflows: Iterable[type[WorkflowEntrypoint]], *, broker_url: str | None = None,
        database_url: str | None = None, settings: Settings | None = None, **overrides: Any,
    ) -> None:
        self.workflows: dict[str, type[WorkflowEntrypoint]] = {}
        for wf in workflows:
            if not (isinstance(wf, type) and issubclass(wf, WorkflowEntrypoint)):
                raise ValidationError(f"{wf!r} is not a WorkflowEntrypoint subclass")
            if wf.name in self.workflows and self.workflows[wf.name] is not wf:
                raise ValidationError(f"two workflows are named {wf.name!r}")
            self.workflows[wf.name] = wf
        if not self.workflows:
            raise ValidationError("a worker needs at least one workflow")
        base = settings or Settings.from_env()
        from dataclasses import replace
        self.settings = replace(base, **{k: v for k, v in {
            "broker_url": broker_url, "database_url": database_url, **overrides,
        }.items() if v is not None})
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.db = Database(self.settings.database_url)
        self.broker: Broker = broker_from_url(self.settings.broker_url, self.settings.namespace)
        s = self.settings
        self._runner = StepRunner(self.db, concurrency=s.concurrency,
                                  heartbeat_interval=s.heartbeat_timeout_s / 3)
        self._turns = TurnLoop(
            self.db, self.broker, self._runner, self.workflows, worker_id=self.worker_id,
            batch_size=s.turn_batch_size, lease_ms=int(s.lease_s * 1000),
            parallelism=s.turn_parallelism, wake_lead_ms=int(s.wake_lead_s * 1000),
            resume_cache_steps=s.resume_cache_steps,
            lifecycle_events=LifecycleEvents(s.lifecycle_events),
            event_grace_s=s.event_grace_s, max_early_events=max(1, s.prefetch // 2),
        )
        self._sweeper = Sweeper(
            self.db, self.broker, worker_id=self.worker_id, served=self.workflows,
            interval_s=s.sweep_interval_s, grace_ms=int(s.sweep_grace_s * 1000),
            heartbeat_timeout_ms=int(s.heartbeat_timeout_s * 1000),
            retention_ms=int(s.retention_days * 86_400_000),
        )
        self._consumers: list[Consumer] = []
        self._stopped = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        """Create the schema, declare the topology, and start consuming. Idempotent."""
        if self._started:
            return
        self._started = True
        await self.db.create_schema()
        limits = self.settings.workflow_max_concurrency
        async with self.db.transaction() as conn:
            await ensure_workflows_txn(conn, list(self.workflows), now_ms())
            await configure_txn(conn, {
                name: GateConfig(limits.get(name, wf.max_concurrency), wf.max_creation_rate)
                for name, wf in self.workflows.items()
            }, self.settings.max_concurrency, now_ms())
        await self.broker.connect()
        for name in self.workflows:
            await self.broker.declare_workflow(name)
        self._runner.start(self._turns.apply_results)
        self._turns.start()
        self._sweeper.start()
        for name in self.workflows:
            self._consumers.append(await self.broker.consume(
                name, self._turns.handler(name), prefetch=self.settings.prefetch
            ))
        self._consumers.append(await self.broker.consume_unroutable(
            unroutable_handler(self.broker, self.workflows), prefetch=10))
        log.info("worker started", worker=self.worker_id, workflows=sorted(self.workflows),
                 broker=_redact(self.settings.broker_url or "memory://"),
                 database=_redact(self.settings.database_url),
                 lifecycle_events=self.settings.lifecycle_events)

    async def run(self) -> None:
        """Start and serve until :meth:`stop` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.close()

    async def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stopped.set()

    async def close(self) -> None:
        """Stop consuming, stop running steps (others will retry them), and disconnect."""
        if not self._started:
            return
        self._started = False
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        await self._sweeper.stop()
        await self._turns.stop()
        await self._runner.stop()
        await self.broker.close()
        await self.db.close()
        log.info("worker stopped", worker=self.worker_id)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
