"""Saga rollbacks: compensate started steps, newest first, when an instance fails for good.

Part of the replay executor (a mixin of ``InstanceRun``): handlers are the callables that
``run()`` registered on its steps, so replay rebuilds them after any crash. Each handler runs
as a durable ``rollback`` step of its own (retried and timed out per ``rollback_config``),
one at a time, in reverse order of the persisted step start sequence.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from engine import _history as h
from sdk._workflow import RollbackContext, StepBody, StepInfo

if TYPE_CHECKING:
    from engine._replay import AttemptStart, TurnOutcome, _Call

ROLLBACK_PREFIX = "rollback:"
TERMINATED_ERROR = {"name": "InstanceTerminated", "message": "terminated on request"}


def rollback_key(step_key: str) -> str:
    """History key of the handler that compensates ``step_key``."""
    return ROLLBACK_PREFIX + step_key


class SagaMixin:
    """Decides the rollback steps of a turn; mixed into the replay executor."""

    outcome: TurnOutcome
    now_ms: int
    _records: dict[str, h.StepRecord]
    _calls: dict[str, _Call]
    _next_start: int
    _rollback_error: dict[str, Any] | None

    def _start_attempt(self, attempt: AttemptStart) -> None: ...

    def _compensated_call(self, record: h.StepRecord) -> _Call | None:
        """The step call a rollback record compensates (rebuilt by this replay)."""
        return self._calls.get(record.key.removeprefix(ROLLBACK_PREFIX))

    def _handler_body(self, call: _Call, attempt_of: h.StepRecord) -> StepBody:
        """The handler bound to its context: the error, the step and its persisted output."""
        assert call.rollback is not None
        ctx = RollbackContext(
            error=dict(self._rollback_error or {}), step=StepInfo(call.name, call.count),
            attempts=attempt_of.attempt,
            output=attempt_of.output if attempt_of.state == h.SUCCEEDED else None,
        )
        return functools.partial(call.rollback, ctx)

    def _advance_saga(self, error: dict[str, Any], final_status: str) -> None:
        """Run the next handler, or finish with ``final_status`` once none is left."""
        from engine._replay import AttemptStart

        self._rollback_error = error
        eligible = sorted(
            (c for c in self._calls.values()
             if c.kind == h.DO and c.rollback is not None and c.key in self._records),
            key=lambda c: self._records[c.key].start_seq, reverse=True,
        )
        outcome = self.outcome
        if not eligible:
            outcome.status = final_status
            return
        outcome.status = h.STATUS_RUNNING
        if any(self._records[c.key].state == h.RUNNING
               and self._records[c.key].attempt_outcome is None for c in eligible):
            return  # compensate only once every step's in-flight attempt has settled
        if not any(rollback_key(c.key) in self._records for c in eligible):
            outcome.step_events.append(("rollback.started", {
                "error": error, "steps": [c.name for c in eligible]}))
        for call in eligible:
            record = self._records.get(rollback_key(call.key))
            if record is None:
                self._start_handler(call, AttemptStart)
                return
            if record.state == h.FAILED:
                self._finish_saga(final_status, "failed", record.error)
                return
            if record.state == h.BACKOFF:
                outcome.status = h.STATUS_WAITING  # as for a step's retry (API.md §6)
                return
            if record.state != h.SUCCEEDED:
                return  # the handler's attempt is running
        self._finish_saga(final_status, "complete", None)

    def _start_handler(self, call: _Call, attempt_type: type[AttemptStart]) -> None:
        assert call.rollback_config is not None
        forward = self._records[call.key]
        record = h.StepRecord(
            key=rollback_key(call.key), name=call.name, count=call.count, kind=h.ROLLBACK,
            start_seq=self._next_start, state=h.RUNNING,
            config=call.rollback_config.to_json(), started_at_ms=self.now_ms, attempt=1,
        )
        self._next_start += 1
        self._records[record.key] = record
        self.outcome.inserted.append(record)
        self._start_attempt(attempt_type(
            record.key, call.name, call.count, 1, self._handler_body(call, forward),
            call.rollback_config,
        ))

    def _finish_saga(self, final_status: str, result: str, error: Any) -> None:
        if error is not None:
            error = {"name": error.get("name"), "message": error.get("message")}
        self.outcome.status = final_status
        self.outcome.rollback = {"outcome": result, "error": error}
        self.outcome.step_events.append(("rollback.finished", {"outcome": result,
                                                               "error": error}))
