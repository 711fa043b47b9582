"""What a test said a step, sleep or wait should do instead (``sdk.testing``).

``WorkflowTestEnv`` installs a :class:`Doubles` as :data:`active` for its lifetime, one at
a time per process; everywhere else ``active`` is None, and each place that asks costs one
attribute check. The engine asks when it runs a step attempt (a mocked result, error or
timeout replaces the body; never a rollback handler's), when a turn decides a new sleep or
wait (disabled sleeps and forced event timeouts fall due at once, so that turn completes
them), and when it schedules a retry (after a mocked failure, at once).
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


MOCKED = "mocked"
"""Flag in a mocked failure's error: its retry is not delayed (the delay would only slow
the test down)."""


@dataclass(frozen=True, slots=True)
class StepDouble:
    """Instead of running a step's body: return ``value``, raise ``error`` (for the first
    ``times`` attempts, or every one), or time out; at one ``occurrence`` of the step's
    name (1-based), or every one."""

    kind: Literal["result", "error", "timeout"]
    value: Any = None
    error: Exception | None = None
    times: int | None = None
    occurrence: int | None = None

    def fails(self, attempt: int) -> bool:
        """Whether this double fails ``attempt`` (an error or a timeout that applies)."""
        return self.kind != "result" and (self.times is None or attempt <= self.times)

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
    """A test environment's doubles, each with the instances it targets."""

    steps: list[tuple[Target, str, StepDouble]] = field(default_factory=list)
    no_sleeps: list[Target] = field(default_factory=list)
    event_timeouts: list[tuple[Target, str]] = field(default_factory=list)
    events: list[tuple[Target, str]] = field(default_factory=list)  # event types mocked

    def step(self, workflow: str, instance_id: str, name: str, occurrence: int,
             attempt: int) -> StepDouble | None:
        """What replaces this attempt's body: a failure that applies to it (the latest
        registered), else the latest mocked result, else nothing. So N mocked errors and a
        mocked result make N failed attempts, then the result."""
        doubles = [d for t, step, d in reversed(self.steps)
                   if step == name and d.occurrence in (None, occurrence)
                   and t.matches(workflow, instance_id)]
        failing = next((d for d in doubles if d.fails(attempt)), None)
        return failing or next((d for d in doubles if d.kind == "result"), None)

    def sleeps_disabled(self, workflow: str, instance_id: str) -> bool:
        return any(t.matches(workflow, instance_id) for t in self.no_sleeps)

    def event_timeout_forced(self, workflow: str, instance_id: str, name: str,
                             event_type: str) -> bool:
        """A forced timeout, unless an event of that type is mocked for the instance (it
        is on its way: the event wins, whatever the timing)."""
        return any(step == name and t.matches(workflow, instance_id)
                   for t, step in self.event_timeouts) and not any(
            kind == event_type and t.matches(workflow, instance_id) for t, kind in self.events)


active: Doubles | None = None
