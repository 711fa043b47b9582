"""In-memory shapes of an instance and its step history, as the replay executor sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Step kinds (the ``type`` of API.md §6).
DO, SLEEP, SLEEP_UNTIL, WAIT_FOR_EVENT, ROLLBACK = (
    "do", "sleep", "sleep_until", "wait_for_event", "rollback"
)

# Step states.
RUNNING = "running"      # an attempt is in flight (or ended, not yet applied by a turn)
BACKOFF = "backoff"      # waiting to retry
WAITING = "waiting"      # sleeping
SUCCEEDED = "succeeded"
FAILED = "failed"

# Instance statuses (API.md §6).
QUEUED, STATUS_RUNNING, STATUS_WAITING = "queued", "running", "waiting"
PAUSED, WAITING_FOR_PAUSE = "paused", "waiting_for_pause"
COMPLETE, ERRORED, TERMINATED = "complete", "errored", "terminated"
FINISHED_STATUSES = frozenset({COMPLETE, ERRORED, TERMINATED})


@dataclass(slots=True)
class StepRecord:
    """One row of history; the replay mutates copies of these to describe its decisions."""

    key: str
    name: str
    count: int
    kind: str
    start_seq: int
    state: str
    config: dict[str, Any]
    started_at_ms: int
    completed_seq: int | None = None
    attempt: int = 0
    attempt_outcome: str | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    wake_at_ms: int | None = None
    ended_at_ms: int | None = None
    attempt_started_at_ms: int | None = None  # when its latest attempt started
    token: str | None = None  # of its latest attempt (a column of its own: not in step_values)

    @property
    def completed(self) -> bool:
        return self.completed_seq is not None


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """An attempt whose failure a turn applied: a row of the attempt log, which keeps the
    attempts that failed (a step's latest attempt is described by its own row)."""

    key: str
    attempt: int
    started_at_ms: int
    ended_at_ms: int
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one step attempt ended, as the runner reports it (JSON-encoded output or error)."""

    instance_pk: int
    key: str
    attempt: int
    token: str
    ok: bool
    output: str | None
    error: str | None
    ended_at_ms: int


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event sent to the instance that no wait has consumed yet."""

    pk: int
    type: str
    payload: Any
    received_at_ms: int


@dataclass(slots=True)
class InstanceSnapshot:
    """What a turn knows of an instance besides its steps."""

    pk: int
    workflow: str
    instance_id: str
    params: Any
    status: str
    created_at_ms: int
    fence: int
    started_at_ms: int | None = None
    paused: bool = False
    control: dict[str, Any] | None = None
    slot: bool = False
    admit_priority: int | None = None
    steps: list[StepRecord] = field(default_factory=list)
    events: list[PendingEvent] = field(default_factory=list)
