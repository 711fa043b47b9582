"""A storage-free driver of the replay executor: turns, step bodies and a virtual clock.

It applies each :class:`TurnOutcome` to an in-memory history the way the store does, runs
started attempts itself, and advances virtual time to the next timer when nothing else is
left, so the semantics of replay can be tested without any service.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine import _history as h
from engine._codec import encode_json, error_dict
from engine._replay import TurnOutcome, replay
from engine._runner import _invoke
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
    control: dict[str, Any] | None = None
    consumed: set[int] = field(default_factory=set)
    events: list[h.PendingEvent] = field(default_factory=list)

    def snapshot(self) -> h.InstanceSnapshot:
        copies = [h.StepRecord(**{f: getattr(r, f) for f in r.__slots__})  # type: ignore[attr-defined]
                  for r in self.steps.values()]
        return h.InstanceSnapshot(pk=1, workflow=self.workflow.name, instance_id="sim",
                                  params=self.params, status="running",
                                  created_at_ms=1_700_000_000_000, fence=1, steps=copies,
                                  control=self.control,
                                  events=[e for e in self.events if e.pk not in self.consumed])

    def turn(self) -> TurnOutcome:
        outcome = replay(self.workflow, self.snapshot(), self.now_ms)
        self.consumed.update(pk for pk, _ in outcome.events_consumed)
        for r in [*outcome.inserted, *outcome.updated]:
            # The store round-trips outputs through JSON.
            r.output = None if r.output is None else orjson.loads(orjson.dumps(r.output))
            self.steps[r.key] = r
        self.turns.append(outcome)
        return outcome

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
