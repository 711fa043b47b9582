"""Testing workflows in process: ``WorkflowTestEnv`` and instance introspection.

In the spirit of Cloudflare's ``introspectWorkflowInstance``::

    async with WorkflowTestEnv(workflows=[Moderate]) as env:
        async with env.introspect("moderate", "inst-1") as i:
            await i.mock_step_result("AI content scan", {"score": 50})
            await i.mock_event("approval", {"action": "approved"})
            await i.disable_sleeps()
        await env.client.workflow("moderate").create(id="inst-1", params={...})
        assert await i.wait_for_step_result("AI content scan") == {"score": 50}
        await i.wait_for_status("complete")

An environment is a real engine, not a simulation: a worker on the embedded broker and a
SQLite store in a temporary directory, both gone when the block ends (or, given their
URLs, on RabbitMQ and PostgreSQL), so workflows run through the same turns, replays and
retries as in production. What a test registers
through an introspector (mocked step results and errors, forced timeouts, mocked events,
disabled sleeps) stays in force until the environment closes; like Cloudflare's, register
it before the instance gets there (a sleep already decided keeps its time). Mocked
failures are retried as the step's config says, without the delay. One environment at a
time per process. ``env.clock.advance("3 days")`` moves the engine's clock forward: sleeps,
event-wait timeouts and retry delays due by then fall due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

from engine import _clock, _test_doubles
from engine._history import FINISHED_STATUSES
from engine._test_doubles import Doubles, StepDouble, Target
from engine._worker import Worker
from sdk._client import Client, Instance, InstanceStatus, Subscription
from sdk._config import check_event_type, check_instance_id, check_step_name
from sdk._durations import Duration, duration_ms
from sdk._workflow import WorkflowEntrypoint
from sdk.errors import InstanceNotFoundError, StepFailedError, ValidationError

__all__ = ["InstanceIntrospector", "VirtualClock", "WorkflowTestEnv"]

log = structlog.get_logger("warren.testing")



class WorkflowTestEnv:
    """An in-process engine for tests: ``async with WorkflowTestEnv(workflows=[...]) as env``.

    Args:
        workflows: The workflow classes to serve.
        timeout: Default seconds the ``wait_for_*`` methods wait.
        broker_url: A broker to run on instead of a fresh embedded one (``amqp://...``).
        database_url: A store to run on instead of a fresh SQLite file; it must hold this
            environment's instances alone (the store has no namespace: another engine's
            instances there would take this environment's doubles).
        namespace: Exchange and queue prefix (default: one of its own).
    """

    def __init__(self, workflows: Sequence[type[WorkflowEntrypoint]], *,
                 timeout: float = 30.0, broker_url: str | None = None,
                 database_url: str | None = None, namespace: str | None = None) -> None:
        self._workflows = list(workflows)
        self.timeout = timeout
        self._where = (broker_url, database_url, namespace)
        self._doubles = Doubles()
        self._events: list[tuple[Target, str, Any]] = []
        self._sent: set[tuple[str, str, int]] = set()  # (workflow, instance, event index)
        self._dir: Path | None = None
        self._worker: Worker | None = None
        self._client: Client | None = None
        self._lifecycle: Subscription | None = None
        self._relay: asyncio.Task[None] | None = None
        self.clock = VirtualClock(self)

    @property
    def client(self) -> Client:
        """A client of this environment's engine."""
        if self._client is None:
            raise RuntimeError("the environment is not started: use `async with`")
        return self._client

    async def __aenter__(self) -> WorkflowTestEnv:
        if _test_doubles.active is not None:
            raise RuntimeError("another WorkflowTestEnv is open in this process")
        _test_doubles.active = self._doubles
        _clock.set_skew_ms(0)
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def _start(self) -> None:
        name = uuid.uuid4().hex[:12]
        broker_url, database_url, namespace = self._where
        broker_url = broker_url or f"memory://test-{name}"
        namespace = namespace or f"test{name}"
        if database_url is None:
            self._dir = Path(tempfile.mkdtemp(prefix="warren-test-"))
            database_url = f"sqlite+aiosqlite:///{self._dir / 'warren.db'}"
        # No grace before a due timer is re-issued: after the clock jumps, the sweep that
        # follows sends every wake-up that fell due.
        self._worker = Worker(self._workflows, broker_url=broker_url,
                              database_url=database_url, namespace=namespace,
                              sweep_grace_s=0.0)
        await self._worker.start()
        self._client = Client(broker_url=broker_url, database_url=database_url,
                              namespace=namespace)
        await self._client.connect()
        # Mocked events are sent when their instance starts (lifecycle events are how a
        # test learns that an instance exists, whoever created it).
        self._lifecycle = self._client.subscribe()
        await self._lifecycle.__aenter__()
        self._relay = asyncio.create_task(self._relay_events(self._lifecycle))

    async def _stop(self) -> None:
        """Close everything, each part even if another fails; raise the first failure."""
        if self._relay is not None:
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)
        failures: list[BaseException] = []
        for close in (self._lifecycle and self._lifecycle.aclose,
                      self._client and self._client.close,
                      self._worker and self._worker.close):
            if close:
                try:
                    await close()
                except Exception as exc:
                    failures.append(exc)
        _test_doubles.active = None
        _clock.set_skew_ms(0)
        self._relay = self._lifecycle = self._client = self._worker = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if failures:
            raise failures[0]

    def introspect(self, workflow: str, instance_id: str) -> InstanceIntrospector:
        """Doubles for one instance (created before or after), and waits on it."""
        check_instance_id(instance_id)
        return InstanceIntrospector(self, Target(workflow, instance_id))

    def introspect_all(self, workflow: str) -> InstanceIntrospector:
        """Doubles for every instance of ``workflow``; its waits need one instance, so use
        :meth:`introspect` for those."""
        return InstanceIntrospector(self, Target(workflow))

    # -- mocked events -------------------------------------------------------------------------

    async def _add_event(self, target: Target, event_type: str, payload: Any) -> None:
        self._events.append((target, event_type, payload))
        self._doubles.events.append((target, event_type))
        if target.instance_id is not None:  # the instance may exist already
            with contextlib.suppress(InstanceNotFoundError):
                await self._send_events(target.workflow, target.instance_id)

    async def _relay_events(self, lifecycle: Subscription) -> None:
        async for event in lifecycle:
            if event.get("kind") in ("instance.queued", "instance.started"):
                try:
                    await self._send_events(str(event["workflow"]), str(event["instance_id"]))
                except Exception:  # the test sees the instance wait and time out
                    log.exception("sending a mocked event failed", event=event)

    async def _send_events(self, workflow: str, instance_id: str) -> None:
        for index, (target, event_type, payload) in enumerate(self._events):
            key = (workflow, instance_id, index)
            if key in self._sent or not target.matches(workflow, instance_id):
                continue
            self._sent.add(key)  # before sending: the relay and a test may both get here
            try:
                # Raises InstanceNotFoundError while it does not exist: no read first.
                await Instance(self.client, workflow, instance_id).send_event(
                    event_type, payload)
            except BaseException:
                self._sent.discard(key)
                raise


class VirtualClock:
    """The environment's clock: the wall clock, plus what the test moved it forward by."""

    def __init__(self, env: WorkflowTestEnv) -> None:
        self._env = env

    def now_ms(self) -> int:
        """The engine's time now, in milliseconds since the epoch."""
        return _clock.now_ms()

    async def advance(self, duration: Duration) -> None:
        """Move the engine's time forward by ``duration`` (``"3 days"``, seconds, a
        ``timedelta``): what falls due by then (sleeps, event-wait timeouts, retry delays)
        is woken now. Steps running meanwhile would look lost and be run again: advance
        while the instances wait."""
        worker = self._env._worker
        if worker is None:
            raise RuntimeError("the environment is not started: use `async with`")
        _clock.set_skew_ms(_clock.skew_ms() + duration_ms(duration))  # never negative
        await worker._sweeper.sweep_once()  # the wake-ups of what is now due, at once


class InstanceIntrospector:
    """What a test says about an instance (or every instance of a workflow): mocks and
    forced timeouts, and waits for what happened. ``async with`` is a scope for reading
    only: the doubles stay in force until the environment closes."""

    def __init__(self, env: WorkflowTestEnv, target: Target) -> None:
        self._env = env
        self._target = target

    async def __aenter__(self) -> InstanceIntrospector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def mock_step_result(self, step: str, value: Any, *,
                               occurrence: int | None = None) -> None:
        """Step ``step`` returns ``value`` without running its body (at every occurrence
        of the name, or the ``occurrence``-th, 1-based). Its rollback handler still runs."""
        self._add_step(step, StepDouble("result", value=value, occurrence=occurrence))

    async def mock_step_error(self, step: str, error: Exception, times: int | None = None,
                              *, occurrence: int | None = None) -> None:
        """Step ``step``'s attempts raise ``error`` (the first ``times`` ones, or all), as
        its body would: retries (without their delay) and ``NonRetryableError`` apply. With
        a mocked result too, the result comes after the failures."""
        if not isinstance(error, Exception):
            raise ValidationError("mock_step_error needs an Exception instance")
        if times is not None and times < 1:
            raise ValidationError("times must be at least 1")
        self._add_step(step, StepDouble("error", error=error, times=times,
                                        occurrence=occurrence))

    async def force_step_timeout(self, step: str, *, occurrence: int | None = None) -> None:
        """Every attempt of step ``step`` times out (then retries as configured)."""
        self._add_step(step, StepDouble("timeout", occurrence=occurrence))

    async def mock_event(self, event_type: str, payload: Any = None) -> None:
        """Send the instance an event of ``event_type`` as soon as it exists (with
        :meth:`WorkflowTestEnv.introspect_all`: each instance created from now on)."""
        check_event_type(event_type)
        try:
            orjson.dumps(payload)
        except TypeError as exc:
            raise ValidationError(f"mock_event payload is not JSON: {exc}") from None
        await self._env._add_event(self._target, event_type, payload)

    async def disable_sleeps(self) -> None:
        """``step.sleep`` and ``step.sleep_until`` complete at once."""
        self._env._doubles.no_sleeps.append(self._target)

    async def force_event_timeout(self, step: str) -> None:
        """``step.wait_for_event(step, ...)`` times out at once: the workflow sees
        ``WorkflowTimeoutError`` (unless an event of its type is mocked or already there)."""
        check_step_name(step)
        self._env._doubles.event_timeouts.append((self._target, step))

    async def wait_for_step_result(self, step: str, timeout: float | None = None, *,
                                   occurrence: int = 1) -> Any:
        """The output of step ``step`` (its ``occurrence``-th call) once it succeeded.

        Raises:
            StepFailedError: The step failed for good.
            TimeoutError: It has not ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + (self._env.timeout if timeout is None else timeout)
        while True:
            status = await self._status()
            if status is not None:
                calls = [r for r in status.to_dict()["steps"]
                         if r["name"] == step and r["type"] != "rollback"]
                for record in calls[occurrence - 1:occurrence]:
                    if record["end"] is None:
                        continue
                    if record["success"]:
                        return record["output"]
                    error = record.get("error") or {}
                    raise StepFailedError(step, str(error.get("name") or "Error"),
                                          str(error.get("message") or ""),
                                          len(record.get("attempts") or ()))
                if status.status in FINISHED_STATUSES:
                    raise TimeoutError(f"instance {self._instance_id!r} ended "
                                       f"{status.status} without step {step!r} ending")
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {step!r} of {self._instance_id!r} has not ended")
            await asyncio.sleep(0.02)

    async def wait_for_status(self, status: str | Iterable[str],
                              timeout: float | None = None) -> InstanceStatus:
        """Wait until the instance exists and its status is ``status`` (one or several)."""
        limit = self._env.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while await self._status() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance {self._instance_id!r} does not exist after "
                                   f"{limit}s")
            await asyncio.sleep(0.02)
        return await self._instance().wait_for_status(
            status, timeout=max(deadline - time.monotonic(), 0.0))

    def _add_step(self, step: str, double: StepDouble) -> None:
        check_step_name(step)
        self._env._doubles.steps.append((self._target, step, double))

    @property
    def _instance_id(self) -> str:
        if self._target.instance_id is None:
            raise ValidationError(f"introspect_all({self._target.workflow!r}) follows every "
                                  "instance: wait on one with env.introspect(workflow, id)")
        return self._target.instance_id

    def _instance(self) -> Instance:
        return Instance(self._env.client, self._target.workflow, self._instance_id)

    async def _status(self) -> InstanceStatus | None:
        """The instance's status; None while it does not exist (one read, unlike ``get``
        and then ``status``)."""
        try:
            return await self._instance().status()
        except InstanceNotFoundError:
            return None
