"""A storage-free driver of the replay executor: turns, step bodies and a virtual clock.

It applies each :class:`TurnOutcome` to an in-memory history the way the store does, runs
started attempts itself, and advances virtual time to the next timer when nothing else is
left, so the semantics of replay can be tested without any service.

With ``resume_in_memory`` (the class default is switched by a fixture, so every replay test
runs both ways), a turn continues the previous turn's :class:`InstanceRun` where the worker
would, and checks that it decides exactly what a replay from the stored history decides.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from engine import _history as h
from engine._codec import encode_json, error_dict
from engine._replay import InstanceRun, TurnOutcome, replay
from engine._runner import _invoke
from engine._store._rows import step_values
from sdk._workflow import StepContext, StepInfo, WorkflowEntrypoint
from sdk.errors import NonRetryableError, ValidationError


@dataclass
class Simulation:
    workflow: type[WorkflowEntrypoint]
    params: Any = None
    now_ms: int = 1_700_000_000_000
    steps: dict[str, h.StepRecord] = field(default_factory=dict)
    turns: list[TurnOutcome] = field(default_factory=list)
    attempt_log: list[tuple[str, int, int]] = field(default_factory=list)  # key, attempt, at
    failure_log: list[h.FailedAttempt] = field(default_factory=list)  # as the store logs them
    control: dict[str, Any] | None = None
    consumed: set[int] = field(default_factory=set)
    events: list[h.PendingEvent] = field(default_factory=list)
    resume_in_memory: bool = field(default_factory=lambda: Simulation.resume_by_default)
    resumed_turns: int = 0
    _run: InstanceRun | None = None
    _ended: list[h.AttemptResult] = field(default_factory=list)

    resume_by_default: ClassVar[bool] = False

    def snapshot(self) -> h.InstanceSnapshot:
        copies = [_copy(r) for r in self.steps.values()]
        return h.InstanceSnapshot(pk=1, workflow=self.workflow.name, instance_id="sim",
                                  params=self.params, status="running",
                                  created_at_ms=1_700_000_000_000, fence=1, steps=copies,
                                  control=self.control,
                                  events=[e for e in self.events if e.pk not in self.consumed])

    def turn(self) -> TurnOutcome:
        snapshot = self.snapshot()
        if self._run is not None and self._run.resumable and self.control is None:
            replayed = replay(self.workflow, snapshot, self.now_ms)
            snapshot.steps = []
            outcome = self._run.resume(snapshot, self.now_ms, self._ended)
            assert _decisions(outcome) == _decisions(replayed)
            self.resumed_turns += 1
        else:
            run = InstanceRun(self.workflow, snapshot, self.now_ms)
            outcome = run.run()
            self._run = run if self.resume_in_memory else None
        self._ended = []
        for failed in outcome.failed_attempts:  # the store's key: each is logged once
            assert all((f.key, f.attempt) != (failed.key, failed.attempt)
                       for f in self.failure_log), f"{failed} logged twice"
            self.failure_log.append(failed)
        self.consumed.update(pk for pk, _ in outcome.events_consumed)
        for r in [*outcome.inserted, *outcome.updated]:
            # The store keeps its own copy, and round-trips outputs through JSON.
            r = _copy(r)
            r.output = None if r.output is None else orjson.loads(orjson.dumps(r.output))
            self.steps[r.key] = r
        for attempt in outcome.attempts:  # as the store keeps each attempt's token
            self.steps[attempt.key].token = attempt.token
        self.turns.append(outcome)
        return outcome

    def restart_worker(self) -> None:
        """Forget the run kept in memory, as a worker restart (a deploy) does."""
        self._run = None

    async def run_attempts(self, outcome: TurnOutcome) -> None:
        async def one(a: Any) -> None:
            self.attempt_log.append((a.key, a.attempt, self.now_ms))
            record = self.steps[a.key]
            try:
                value = await asyncio.wait_for(
                    _invoke(a.fn, StepContext(StepInfo(a.name, a.count), a.attempt, a.config)),
                    a.config.timeout.total_seconds())
                record.output = orjson.loads(encode_json(value, what="output"))
                record.attempt_outcome = "ok"
            except TimeoutError:
                record.error = {"name": "StepTimeoutError", "message": "timeout"}
                record.attempt_outcome = "error"
            except (NonRetryableError, ValidationError) as exc:
                record.error = {**error_dict(exc), "non_retryable": True}
                record.attempt_outcome = "error"
            except Exception as exc:
                record.error = error_dict(exc)
                record.attempt_outcome = "error"
            record.ended_at_ms = self.now_ms
            self._ended.append(h.AttemptResult(
                instance_pk=1, key=a.key, attempt=a.attempt, token=a.token,
                ok=record.attempt_outcome == "ok",
                output=None if record.output is None else orjson.dumps(record.output).decode(),
                error=None if record.error is None else orjson.dumps(record.error).decode(),
                ended_at_ms=self.now_ms))
        await asyncio.gather(*(one(a) for a in outcome.attempts))

    async def run(self, max_turns: int = 1000) -> TurnOutcome:
        for _ in range(max_turns):
            outcome = self.turn()
            if outcome.finished:
                return outcome
            if outcome.attempts:
                await self.run_attempts(outcome)
                continue
            pending = [r.wake_at_ms for r in self.steps.values()
                       if r.state in (h.WAITING, h.BACKOFF) and r.wake_at_ms is not None]
            if not pending:
                return outcome
            self.now_ms = max(self.now_ms, min(pending))
        raise AssertionError("simulation did not finish")


def _copy(record: h.StepRecord) -> h.StepRecord:
    return h.StepRecord(**{f: getattr(record, f) for f in record.__slots__})  # type: ignore[attr-defined]


def _decisions(outcome: TurnOutcome) -> dict[str, Any]:
    """What a turn decided, as the store would write it (without the attempts' tokens)."""
    return {
        "inserted": [(r.key, step_values(r)) for r in outcome.inserted],
        "updated": sorted((r.key, repr(step_values(r))) for r in outcome.updated),
        "attempts": [(a.key, a.attempt, a.config) for a in outcome.attempts],
        **{name: getattr(outcome, name) for name in (
            "timers_set", "timers_cleared", "status", "output", "error", "progress",
            "events_consumed", "step_events", "failed_attempts", "rollback")},
    }
