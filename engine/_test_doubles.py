"""What a test said a step, sleep or wait should do instead (``sdk.testing``).

``WorkflowTestEnv`` installs a :class:`Doubles` as :data:`active` for its lifetime, one at
a time per process; everywhere else ``active`` is None, and each place that asks costs one
attribute check. The engine asks when it runs a step attempt (a mocked result, error or
timeout replaces the body) and when a turn decides a new sleep or wait (disabled sleeps
and forced event timeouts fall due at once, so that turn completes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Target:
    """One instance of a workflow, or (``instance_id`` None) every instance of it."""

    workflow: str
    instance_id: str | None = None

    def matches(self, workflow: str, instance_id: str) -> bool:
        return self.workflow == workflow and self.instance_id in (None, instance_id)


@dataclass(frozen=True, slots=True)
class StepDouble:
    """Instead of running a step's body: return ``value``, raise ``error`` (for the first
    ``times`` attempts, or every one), or time out."""

    kind: Literal["result", "error", "timeout"]
    value: Any = None
    error: BaseException | None = None
    times: int | None = None

    def applies_to(self, attempt: int) -> bool:
        return self.kind != "error" or self.times is None or attempt <= self.times

    def play(self) -> Any:
        """The mocked outcome: the value, or the exception the body would have raised."""
        if self.kind == "timeout":
            raise TimeoutError
        if self.kind == "error":
            assert self.error is not None
            raise self.error
        return self.value


@dataclass(slots=True)
class Doubles:
    """A test environment's doubles; the latest one registered for a step wins."""

    steps: list[tuple[Target, str, StepDouble]] = field(default_factory=list)
    no_sleeps: list[Target] = field(default_factory=list)
    event_timeouts: list[tuple[Target, str]] = field(default_factory=list)

    def step(self, workflow: str, instance_id: str, name: str, attempt: int
             ) -> StepDouble | None:
        for target, step, double in reversed(self.steps):
            if step == name and target.matches(workflow, instance_id):
                return double if double.applies_to(attempt) else None
        return None

    def sleeps_disabled(self, workflow: str, instance_id: str) -> bool:
        return any(t.matches(workflow, instance_id) for t in self.no_sleeps)

    def event_timeout_forced(self, workflow: str, instance_id: str, name: str) -> bool:
        return any(step == name and t.matches(workflow, instance_id)
                   for t, step in self.event_timeouts)


active: Doubles | None = None
