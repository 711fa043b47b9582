"""Executes step bodies after their turn committed: timeouts, heartbeats, group-committed results.

Bodies run as tasks on the worker's loop (async functions) or in its thread pool (sync
functions), at most ``concurrency`` at once. Ended attempts are handed to the reporter in
batches — whatever finished while the previous batch was being reported — which stores
them and runs the turns that apply them (see ``TurnLoop.apply_results``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from engine import _test_doubles
from engine._clock import now_ms
from engine._codec import encode_json, error_dict
from engine._history import AttemptResult
from engine._replay import AttemptStart
from engine._store._database import Database
from engine._store._turns import heartbeat_txn
from sdk._workflow import StepContext, StepInfo
from sdk.errors import NonRetryableError, ValidationError

log = structlog.get_logger("warren.runner")


@dataclass(frozen=True, slots=True)
class StepJob:
    """One attempt to execute, with where to report its result."""

    workflow: str
    instance_id: str
    instance_pk: int
    attempt: AttemptStart


class StepRunner:
    """Runs step attempts and reports their outcomes."""

    def __init__(
        self, db: Database, *, concurrency: int, heartbeat_interval: float
    ) -> None:
        self._db = db
        self._slots = asyncio.Semaphore(concurrency)
        self._heartbeat_interval = heartbeat_interval
        self._running: dict[tuple[int, str, str], asyncio.Task[None]] = {}
        self._results: list[tuple[StepJob, AttemptResult]] = []
        # Attempts that ended but whose result is not yet in SQL keep heartbeating: until it
        # is written, the sweeper must not take them for lost and run them again.
        self._unflushed: set[tuple[int, str, str]] = set()
        self._results_ready = asyncio.Event()
        self._report: ResultReporter = _not_started
        self._flushing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, report: ResultReporter) -> None:
        """Start flushing and heartbeating; ``report`` stores each batch of ended attempts
        (and runs the turns that apply them) and returns those it could not store."""
        self._report = report
        self._tasks = [asyncio.create_task(self._flush_forever(), name="warren-flush"),
                       asyncio.create_task(self._heartbeat_forever(), name="warren-heartbeat")]

    async def stop(self) -> None:
        """Stop without reporting in-flight attempts (their heartbeats expire; another worker
        retries them), after flushing the results already produced."""
        # A report in progress is let finish (cancelling it mid-transaction can leave an
        # SQLite connection holding the write lock); the steps it starts are cancelled next.
        async with self._flushing:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        await self._flush()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, job: StepJob) -> None:
        key = (job.instance_pk, job.attempt.key, job.attempt.token)
        task = asyncio.create_task(self._run(job), name=f"warren-step:{job.attempt.key}")
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _run(self, job: StepJob) -> None:
        a = job.attempt
        bound = log.bind(workflow=job.workflow, instance=job.instance_id, step=a.key,
                         attempt=a.attempt)
        async with self._slots:
            ctx = StepContext(StepInfo(a.name, a.count), a.attempt, a.config)
            ok, output = False, None
            error: dict[str, Any] | None = None
            doubles = _test_doubles.active
            double = (doubles.step(job.workflow, job.instance_id, a.name, a.count, a.attempt)
                      if doubles is not None and not a.rollback else None)
            try:
                value = (double.play() if double is not None else
                         await asyncio.wait_for(_invoke(a.fn, ctx),
                                                a.config.timeout.total_seconds()))
                output = encode_json(value, what=f"output of step {a.name!r}")
                ok = True
            except TimeoutError:
                error = {"name": "StepTimeoutError",
                         "message": f"attempt exceeded the step timeout of {a.config.timeout}"}
            except (NonRetryableError, ValidationError) as exc:
                error = {**error_dict(exc), "non_retryable": True}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = error_dict(exc)
            if error is not None and double is not None:
                error[_test_doubles.MOCKED] = True
            bound.debug("step attempt ended", ok=ok, error=error)
        self._unflushed.add((job.instance_pk, a.key, a.token))
        self._results.append((job, AttemptResult(
            instance_pk=job.instance_pk, key=a.key, attempt=a.attempt, token=a.token, ok=ok,
            output=output,
            error=None if error is None else orjson.dumps(error).decode(), ended_at_ms=now_ms(),
        )))
        self._results_ready.set()

    async def _flush_forever(self) -> None:
        while True:
            await self._results_ready.wait()
            try:
                stored = await self._flush()
            except Exception:
                log.exception("reporting step results failed; retrying")
                stored = False
            if not stored:
                # Results stay queued and are written on the next round; heartbeats keep the
                # attempts alive meanwhile, so nothing is retried needlessly.
                await asyncio.sleep(0.5)

    async def _flush(self) -> bool:
        """Report the results waiting; False if some could not be stored (they are kept)."""
        async with self._flushing:
            self._results_ready.clear()
            batch, self._results = self._results, []
            if not batch:
                return True
            try:
                unstored = await self._report(batch)
            except BaseException:
                unstored = batch
                raise
            finally:
                if unstored:
                    self._results[:0] = unstored
                    self._results_ready.set()
            kept = {(r.instance_pk, r.key, r.token) for _, r in unstored}
            self._unflushed.difference_update(
                key for _, r in batch if (key := (r.instance_pk, r.key, r.token)) not in kept)
            return not unstored

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                async with self._db.transaction() as conn:
                    await heartbeat_txn(conn, [*self._running, *self._unflushed], now_ms())
            except Exception:
                log.exception("heartbeat failed")


async def _invoke(fn: Callable[..., Any], ctx: StepContext) -> Any:
    """Call a step function: async ones on the loop, sync ones in the thread pool."""
    call: Callable[[], Any] = (
        functools.partial(fn, ctx=ctx) if _takes_ctx(fn) else fn
    )
    if inspect.iscoroutinefunction(fn):
        return await call()
    result = await asyncio.to_thread(call)
    if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
        return await result
    return result


def _takes_ctx(fn: Callable[..., Any]) -> bool:
    try:
        return "ctx" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


ResultReporter = Callable[[list[tuple[StepJob, AttemptResult]]],
                          Awaitable[list[tuple[StepJob, AttemptResult]]]]
"""Stores a batch of ended attempts (and runs the turns that apply them); returns the ones
it could not store."""


async def _not_started(
    results: list[tuple[StepJob, AttemptResult]]
) -> list[tuple[StepJob, AttemptResult]]:
    raise RuntimeError("StepRunner.start() was not called")
