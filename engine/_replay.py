"""The replay executor: given an instance's history and the time, decide what happens next.

It is pure with respect to storage: the turn loads a snapshot, calls :func:`replay`, and
persists the :class:`TurnOutcome`. ``run()`` is executed from the top on a
:class:`ReplayLoop`; recorded outcomes are resolved one at a time in ``completed_seq``
order with the loop run to idleness after each, which is exactly how every earlier turn
saw them, so races (``asyncio.wait(..., FIRST_COMPLETED)``) replay the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine import _history as h
from engine import _test_doubles
from engine._codec import decode_json, error_dict, public_error, validate_json_value
from engine._replay_loop import ReplayLoop
from engine._saga import ROLLBACK_PREFIX, TERMINATED_ERROR, SagaMixin
from sdk._config import MAX_SLEEP, StepConfig, check_event_type, check_step_name
from sdk._durations import Duration, duration_ms, parse_duration
from sdk._workflow import (
    ReceivedEvent,
    RollbackHandler,
    StepBody,
    StepContext,
    StepInfo,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
)
from sdk.errors import (
    LimitExceededError,
    NonDeterminismError,
    StepFailedError,
    ValidationError,
    WarrenError,
    WorkflowTimeoutError,
)

MAX_STEPS_PER_INSTANCE = 10_000
_ATTEMPTED = (h.DO, h.ROLLBACK)  # kinds whose outcome comes from running a body


class RecordedError(WarrenError):
    """A step attempt's error as recorded in history (handed to callable retry delays)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(slots=True)
class AttemptStart:
    """A ``do`` step attempt the worker must run once the turn has committed."""

    key: str
    name: str
    count: int
    attempt: int
    fn: StepBody
    config: StepConfig
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @property
    def rollback(self) -> bool:
        """Whether this is a rollback handler's attempt (its key is the handler's)."""
        return self.key.startswith(ROLLBACK_PREFIX)


@dataclass(slots=True)
class TurnOutcome:
    """Everything a turn decided, for the store to commit and the worker to act on."""

    inserted: list[h.StepRecord] = field(default_factory=list)
    updated: list[h.StepRecord] = field(default_factory=list)
    attempts: list[AttemptStart] = field(default_factory=list)
    timers_set: dict[str, int] = field(default_factory=dict)
    timers_cleared: list[str] = field(default_factory=list)
    status: str = h.STATUS_RUNNING
    output: Any = None
    error: dict[str, Any] | None = None
    progress: list[Any] = field(default_factory=list)
    events_consumed: list[tuple[int, str]] = field(default_factory=list)
    step_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failed_attempts: list[h.FailedAttempt] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    loose_ends: bool = True
    """Whether a finished instance may still have attempts in flight or timers set that
    this outcome does not clear (unknown unless a replay saw its whole history)."""

    @property
    def finished(self) -> bool:
        return self.status in h.FINISHED_STATUSES


@dataclass(slots=True)
class _Call:
    key: str
    name: str
    count: int
    kind: str
    future: asyncio.Future[Any]
    fn: StepBody | None = None
    config: StepConfig | None = None
    rollback: RollbackHandler | None = None
    rollback_config: StepConfig | None = None
    wake_at_ms: int | None = None
    event_type: str | None = None


class _ReplayStep(WorkflowStep):
    """The ``step`` object handed to ``run()`` during a replay."""

    def __init__(self, replay: InstanceRun) -> None:
        self._replay = replay
        self._step_functions: dict[str, Any] = {}

    def _start_step(
        self, name: str, fn: StepBody, config: StepConfig,
        rollback: RollbackHandler | None, rollback_config: StepConfig,
    ) -> asyncio.Future[Any]:
        call = self._replay.call(h.DO, name)
        call.fn, call.config = fn, config
        call.rollback, call.rollback_config = rollback, rollback_config
        return call.future

    def sleep(self, name: str, duration: Duration) -> asyncio.Future[None]:
        delay = parse_duration(duration)
        if delay > MAX_SLEEP:
            raise LimitExceededError(f"sleep {name!r} of {delay} exceeds the limit of 365 days")
        call = self._replay.call(h.SLEEP, name)
        call.wake_at_ms = self._wake_at(self._replay.now_ms + duration_ms(delay))
        return call.future

    def sleep_until(self, name: str, when: datetime | float) -> asyncio.Future[None]:
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValidationError(f"sleep_until {name!r}: use a timezone-aware datetime")
            wake_at_ms = int(when.timestamp() * 1000)
        elif isinstance(when, int | float) and not isinstance(when, bool):
            wake_at_ms = int(when * 1000)
        else:
            raise ValidationError(f"sleep_until {name!r}: expected a datetime or a timestamp")
        if wake_at_ms - self._replay.now_ms > duration_ms(MAX_SLEEP):
            raise LimitExceededError(f"sleep_until {name!r} is more than 365 days away")
        call = self._replay.call(h.SLEEP_UNTIL, name)
        call.wake_at_ms = self._wake_at(wake_at_ms)
        return call.future

    def wait_for_event(
        self, name: str, event_type: str, *, timeout: Duration = timedelta(hours=24)
    ) -> asyncio.Future[ReceivedEvent]:
        check_event_type(event_type)
        limit = parse_duration(timeout)
        if limit > MAX_SLEEP:
            raise LimitExceededError(
                f"wait_for_event {name!r}: timeout {limit} exceeds the limit of 365 days")
        call = self._replay.call(h.WAIT_FOR_EVENT, name)
        call.event_type = event_type
        doubles, inst = _test_doubles.active, self._replay.instance
        forced = doubles is not None and doubles.event_timeout_forced(
            inst.workflow, inst.instance_id, name, event_type)
        call.wake_at_ms = self._replay.now_ms + (0 if forced else duration_ms(limit))
        return call.future

    def _wake_at(self, wake_at_ms: int) -> int:
        """When a sleep falls due: now, where a test disabled this instance's sleeps."""
        doubles, inst = _test_doubles.active, self._replay.instance
        if doubles is not None and doubles.sleeps_disabled(inst.workflow, inst.instance_id):
            return min(wake_at_ms, self._replay.now_ms)
        return wake_at_ms

    def report_progress(self, data: Any) -> None:
        validate_json_value(data, what="progress")
        self._replay.progress(data)


class InstanceRun(SagaMixin):
    """One instance's ``run()`` on its replay loop: :meth:`run` is a turn replaying it from
    history; while :attr:`resumable`, :meth:`resume` is a later turn continuing it."""

    def __init__(
        self, workflow: type[WorkflowEntrypoint], instance: h.InstanceSnapshot, now_ms: int
    ) -> None:
        self.instance = instance
        self.now_ms = now_ms
        self.outcome = TurnOutcome()
        self._workflow = workflow
        self._records = {r.key: r for r in instance.steps}
        self._changed: dict[str, h.StepRecord] = {}
        self._calls: dict[str, _Call] = {}
        self._new: list[_Call] = []
        self._counts: Counter[str] = Counter()
        self._loop = ReplayLoop()  # type: ignore[abstract]  # I/O methods are never used
        self._next_completed = 1 + max((r.completed_seq or 0 for r in instance.steps), default=0)
        self._next_start = 1 + max((r.start_seq for r in instance.steps), default=0)
        self._divergence: NonDeterminismError | None = None
        self._available_events = list(instance.events)
        self._paused = instance.paused
        control = instance.control or {}
        self._terminating = control.get("op") == "terminate" and bool(control.get("rollback"))
        self._rollback_error: dict[str, Any] | None = None
        # Progress reported while re-running code that an earlier turn already ran was
        # published then; only code running past a new outcome (or a first turn) is new.
        self._first_new_seq = self._next_completed
        self._live = not instance.steps
        self._task: asyncio.Task[Any] | None = None

    def progress(self, data: Any) -> None:
        if self._live:
            self.outcome.progress.append(data)

    # -- called from run() through _ReplayStep ------------------------------------------
    def call(self, kind: str, name: str) -> _Call:
        self._counts[name] += 1
        count = self._counts[name]
        key = StepInfo(name, count).key
        record = self._records.get(key)
        if record is None:
            # A new call: a bad name must fail run() here, not the turn's write (a PostgreSQL
            # column too short for it would fail that turn again at every retry). A recorded
            # step replays whatever its name: an older build may have let it through.
            check_step_name(name)
        if record is not None and record.kind != kind:
            self._divergence = NonDeterminismError(
                f"step {name!r} (occurrence {count}) is a {record.kind!r} step in the recorded "
                f"history, but run() now calls {kind!r} there: the workflow code changed "
                "incompatibly while this instance was in flight"
            )
            raise self._divergence
        if record is None and len(self._records) + len(self._new) >= MAX_STEPS_PER_INSTANCE:
            raise LimitExceededError(
                f"instance has {MAX_STEPS_PER_INSTANCE} steps, the limit per instance"
            )
        call = _Call(key, name, count, kind, self._loop.create_future())
        self._calls[key] = call
        if record is None:
            self._new.append(call)
        return call

    # -- the turn ------------------------------------------------------------------------
    def run(self) -> TurnOutcome:
        """The turn that starts ``run()`` from the top, resolving every recorded outcome."""
        inst = self.instance
        event = WorkflowEvent(
            payload=inst.params, instance_id=inst.instance_id, workflow=inst.workflow,
            timestamp=datetime.fromtimestamp(inst.created_at_ms / 1000, tz=UTC),
        )
        self._task = self._loop.create_task(self._workflow().run(event, _ReplayStep(self)))
        self._loop.run_until_idle()
        retry_waits = self._apply_outcomes()
        self._resolve_completed(since_seq=0)
        self._live = True
        return self._decide(retry_waits)

    def resume(
        self, instance: h.InstanceSnapshot, now_ms: int, ended: Sequence[h.AttemptResult]
    ) -> TurnOutcome:
        """A later turn of the same ``run()``, still suspended in memory.

        ``instance`` is the instance as leased now (its steps need not be loaded: the
        records here are the history as this object's last turn committed it), and
        ``ended`` the attempts whose results this turn's transaction stored. Only what
        happened since that turn is resolved; nothing is re-executed.
        """
        self.instance, self.now_ms, self.outcome = instance, now_ms, TurnOutcome()
        self._changed, self._new = {}, []
        self._available_events = list(instance.events)
        self._paused = instance.paused
        for result in ended:
            self._record_result(result)
        since = self._next_completed
        retry_waits = self._apply_outcomes()
        self._resolve_completed(since_seq=since)
        return self._decide(retry_waits)

    @property
    def resumable(self) -> bool:
        """Whether the next turn may :meth:`resume` this object instead of replaying: only
        while ``run()`` waits on steps in flight, with no command or rollback pending."""
        return (self.outcome.status == h.STATUS_RUNNING and self._task is not None
                and not self._task.done() and self._divergence is None
                and not (self._paused or self._terminating))

    @property
    def history_size(self) -> int:
        return len(self._records)

    def _record_result(self, result: h.AttemptResult) -> None:
        """Apply an ended attempt exactly as the store's guarded update applies it."""
        record = self._records.get(result.key)
        if (record is None or record.token != result.token
                or record.state != h.RUNNING or record.attempt_outcome is not None):
            return
        record.attempt_outcome = "ok" if result.ok else "error"
        record.output, record.error = decode_json(result.output), decode_json(result.error)
        record.ended_at_ms = result.ended_at_ms

    def _resolve_completed(self, *, since_seq: int) -> None:
        """Resolve the calls of records completed at ``since_seq`` or later, in order."""
        for record in sorted(
            (r for r in self._records.values()
             if r.completed_seq is not None and r.completed_seq >= since_seq
             and r.kind != h.ROLLBACK),
            key=lambda r: r.completed_seq or 0,
        ):
            self._resolve(record)

    def _decide(self, retry_waits: list[h.StepRecord]) -> TurnOutcome:
        """What the turn starts, waits for and ends, once the outcomes are resolved."""
        assert self._task is not None
        self._schedule_retries(retry_waits)
        if not (self._task.done() or self._terminating):
            self._start_due_attempts()
            self._decide_new_calls()
        self._decide_status(self._task)
        inserted = {r.key for r in self.outcome.inserted}
        self.outcome.updated = [r for k, r in self._changed.items() if k not in inserted]
        return self.outcome

    def _apply_outcomes(self) -> list[h.StepRecord]:
        """Turn ended attempts and due sleeps into completions; return steps to retry."""
        done: list[tuple[int, int, h.StepRecord, str]] = []
        retry: list[h.StepRecord] = []
        done += self._match_events()
        matched = {d[2].key for d in done}
        for r in self._records.values():
            if r.completed or r.key in matched:
                continue
            if r.kind == h.WAIT_FOR_EVENT and (r.wake_at_ms or 0) <= self.now_ms:
                r.error = {"name": "WorkflowTimeoutError",
                           "message": f"no {r.config.get('event_type')!r} event for wait "
                                      f"{r.name!r} within {r.config.get('timeout_ms')} ms"}
                done.append((r.wake_at_ms or 0, r.start_seq, r, h.FAILED))
            elif r.kind in (h.SLEEP, h.SLEEP_UNTIL) and (r.wake_at_ms or 0) <= self.now_ms:
                done.append((r.wake_at_ms or 0, r.start_seq, r, h.SUCCEEDED))
            elif r.kind in _ATTEMPTED and r.state == h.RUNNING and r.attempt_outcome == "ok":
                done.append((r.ended_at_ms or 0, r.start_seq, r, h.SUCCEEDED))
            elif r.kind in _ATTEMPTED and r.state == h.RUNNING and r.attempt_outcome == "error":
                error = r.error or {}
                # An attempt the engine cut off (a restart after its instance finished
                # mid-attempt) is retried whatever the limit: the step's code did not fail.
                if not error.get("abandoned") and (
                        error.get("non_retryable") or r.attempt > r.config["retries"]["limit"]):
                    self._log_failure(r)
                    done.append((r.ended_at_ms or 0, r.start_seq, r, h.FAILED))
                else:
                    retry.append(r)
        for at_ms, _, record, state in sorted(done, key=lambda d: (d[0], d[1])):
            self._complete(record, state, ended_at_ms=at_ms or self.now_ms)
        return retry

    def _match_events(self) -> list[tuple[int, int, h.StepRecord, str]]:
        """Give each waiting wait, oldest first, the oldest unconsumed event of its type."""
        available = self._available_events
        matched = []
        waits = sorted((r for r in self._records.values()
                        if r.kind == h.WAIT_FOR_EVENT and not r.completed),
                       key=lambda r: r.start_seq)
        for record in waits:
            wanted = record.config.get("event_type")
            deadline = record.wake_at_ms or 0
            # An event that arrived after the wait's deadline does not satisfy it (the
            # timeout's wake-up may simply have been late); it stays for a later wait.
            event = next((e for e in available
                          if e.type == wanted and e.received_at_ms <= deadline), None)
            if event is None:
                continue
            available.remove(event)
            record.output = {"type": event.type, "payload": event.payload,
                             "timestamp": event.received_at_ms}
            self.outcome.events_consumed.append((event.pk, record.key))
            at = max(event.received_at_ms, record.started_at_ms)
            matched.append((at, record.start_seq, record, h.SUCCEEDED))
        return matched

    def _complete(self, record: h.StepRecord, state: str, *, ended_at_ms: int) -> None:
        record.state = state
        record.completed_seq = self._next_completed
        self._next_completed += 1
        record.attempt_outcome = None
        record.ended_at_ms = ended_at_ms
        if record.kind not in _ATTEMPTED:
            self.outcome.timers_cleared.append(record.key)
            self.outcome.timers_set.pop(record.key, None)
        self._changed[record.key] = record
        prefix = "rollback.step" if record.kind == h.ROLLBACK else "step"
        self.outcome.step_events.append((
            f"{prefix}.succeeded" if state == h.SUCCEEDED else f"{prefix}.failed",
            {"step": record.name, "count": record.count, "type": record.kind,
             "attempt": record.attempt, "error": public_error(record.error)},
        ))

    def _resolve(self, record: h.StepRecord) -> None:
        call = self._calls.get(record.key)
        if call is None:
            self._diverge(record)
            return
        error = record.error or {}
        if record.state == h.FAILED and record.kind == h.WAIT_FOR_EVENT:
            call.future.set_exception(WorkflowTimeoutError(str(error.get("message", ""))))
        elif record.state == h.FAILED:
            call.future.set_exception(StepFailedError(
                record.name, str(error.get("name", "Error")), str(error.get("message", "")),
                record.attempt,
            ))
        elif record.kind == h.WAIT_FOR_EVENT:
            out = record.output or {}
            call.future.set_result(ReceivedEvent(
                type=out.get("type", ""), payload=out.get("payload"),
                timestamp=datetime.fromtimestamp(out.get("timestamp", 0) / 1000, tz=UTC),
            ))
        else:
            call.future.set_result(record.output)
        if (record.completed_seq or 0) >= self._first_new_seq:
            self._live = True
        self._loop.run_until_idle()

    def _diverge(self, record: h.StepRecord) -> None:
        if self._divergence is None:
            self._divergence = NonDeterminismError(
                f"step {record.name!r} (occurrence {record.count}, {record.kind}) is in the "
                "recorded history, but run() no longer calls it there: the workflow code "
                "changed incompatibly while this instance was in flight"
            )

    def _log_failure(self, record: h.StepRecord) -> None:
        """Log the failed attempt of a step this turn moves on (completes or retries)."""
        ended = record.ended_at_ms or self.now_ms
        self.outcome.failed_attempts.append(h.FailedAttempt(
            record.key, record.attempt, record.attempt_started_at_ms or ended, ended,
            record.error))

    def _schedule_retries(self, records: list[h.StepRecord]) -> None:
        for record in records:
            config = self._attempt_config(record)
            if config is None:
                self._diverge(record)  # the step stays as stored: nothing is logged
                continue
            self._log_failure(record)
            error = record.error or {}
            ctx = StepContext(StepInfo(record.name, record.count), record.attempt, config)
            try:
                at_once = error.get("abandoned") or error.get(_test_doubles.MOCKED)
                wait = timedelta(0) if at_once else (
                    config.retries.wait_after(
                        record.attempt, ctx,
                        RecordedError(str(error.get("name")), str(error.get("message")))))
            except Exception as exc:  # a failing delay function fails the step (API.md §1)
                record.error = {**error_dict(exc), "non_retryable": True}
                self._complete(record, h.FAILED, ended_at_ms=self.now_ms)
                if record.kind == h.DO:
                    self._resolve(record)
                continue
            record.state = h.BACKOFF
            record.attempt_outcome = None
            record.wake_at_ms = self.now_ms + duration_ms(wait)
            retrying = "rollback.step.retrying" if record.kind == h.ROLLBACK else "step.retrying"
            self.outcome.step_events.append((retrying, {
                "step": record.name, "count": record.count, "attempt": record.attempt,
                "error": public_error(record.error), "retry_in_ms": duration_ms(wait)}))
            self.outcome.timers_set[record.key] = record.wake_at_ms
            self._changed[record.key] = record

    def _attempt_config(self, record: h.StepRecord) -> StepConfig | None:
        if record.kind == h.ROLLBACK:
            owner = self._compensated_call(record)
            return None if owner is None else owner.rollback_config
        call = self._calls.get(record.key)
        return None if call is None else call.config

    def _attempt_body(self, record: h.StepRecord) -> StepBody | None:
        if record.kind == h.ROLLBACK:
            owner = self._compensated_call(record)
            if owner is None or owner.rollback is None or owner.key not in self._records:
                return None
            return self._handler_body(owner, self._records[owner.key])
        call = self._calls.get(record.key)
        return None if call is None else call.fn

    def _start_due_attempts(self, kinds: tuple[str, ...] = (h.DO,)) -> None:
        if self._paused and h.ROLLBACK not in kinds:
            return  # pause takes effect at step boundaries: nothing new starts
        for record in list(self._records.values()):
            if (record.state != h.BACKOFF or record.kind not in kinds
                    or (record.wake_at_ms or 0) > self.now_ms):
                continue
            fn, config = self._attempt_body(record), self._attempt_config(record)
            if fn is None or config is None:
                self._diverge(record)
                continue
            record.state = h.RUNNING
            record.attempt += 1
            record.output = record.error = record.wake_at_ms = None
            self.outcome.timers_cleared.append(record.key)
            self.outcome.timers_set.pop(record.key, None)
            self._start_attempt(AttemptStart(
                record.key, record.name, record.count, record.attempt, fn, config
            ))
            self._changed[record.key] = record

    def _start_attempt(self, attempt: AttemptStart) -> None:
        self.outcome.attempts.append(attempt)
        record = self._records[attempt.key]
        record.token, record.attempt_started_at_ms = attempt.token, self.now_ms
        kind = "rollback.step.started" if attempt.key.startswith("rollback:") else "step.started"
        self.outcome.step_events.append((kind, {
            "step": attempt.name, "count": attempt.count, "attempt": attempt.attempt}))

    def _decide_new_calls(self) -> None:
        if self._paused:
            return  # the calls are made again by the replay after resume
        decided = 0
        while decided < len(self._new):
            batch = self._new[decided:]
            decided = len(self._new)
            for call in batch:
                self._decide_new_call(call)
            # A new wait whose event is already buffered, or a sleep already due, completes in
            # this same turn; resolving it may make run() call further steps.
            for at, _, record, state in sorted(self._instant_completions(batch),
                                               key=lambda d: (d[0], d[1])):
                self._complete(record, state, ended_at_ms=at)
                self._resolve(record)

    def _instant_completions(self, calls: list[_Call]) -> list[tuple[int, int, h.StepRecord, str]]:
        keys = {c.key for c in calls if c.kind != h.DO}
        done = [d for d in self._match_events() if d[2].key in keys]
        matched = {d[2].key for d in done}
        for key in keys - matched:
            record = self._records[key]
            if record.kind in (h.SLEEP, h.SLEEP_UNTIL) and (record.wake_at_ms or 0) <= self.now_ms:
                done.append((self.now_ms, record.start_seq, record, h.SUCCEEDED))
        return done

    def _decide_new_call(self, call: _Call) -> None:
        record = h.StepRecord(
            key=call.key, name=call.name, count=call.count, kind=call.kind,
            start_seq=self._next_start, state=h.RUNNING, config={},
            started_at_ms=self.now_ms,
        )
        self._next_start += 1
        self._records[call.key] = record
        if call.kind == h.DO:
            assert call.fn is not None and call.config is not None
            record.config = call.config.to_json()
            record.attempt = 1
            self._start_attempt(
                AttemptStart(call.key, call.name, call.count, 1, call.fn, call.config)
            )
        else:
            record.state = h.WAITING
            record.wake_at_ms = call.wake_at_ms
            if call.kind == h.WAIT_FOR_EVENT:
                record.config = {"event_type": call.event_type,
                                 "timeout_ms": (call.wake_at_ms or 0) - self.now_ms}
            self.outcome.timers_set[call.key] = call.wake_at_ms or self.now_ms
        self.outcome.inserted.append(record)

    def _decide_status(self, task: asyncio.Task[Any]) -> None:
        outcome = self.outcome
        if self._divergence is not None:
            outcome.status, outcome.error = h.ERRORED, error_dict(self._divergence)
        elif self._terminating:
            # Before task.done(): a forward result landing mid-rollback must not let the
            # instance end complete (or errored) instead of terminated.
            self._rollback_error = TERMINATED_ERROR
            self._start_due_attempts((h.ROLLBACK,))
            self._advance_saga(TERMINATED_ERROR, h.TERMINATED)
        elif task.done():
            self._finish(task)
            if outcome.status == h.ERRORED:
                self._rollback_error = outcome.error or {}  # handlers retried below see it
                self._start_due_attempts((h.ROLLBACK,))
                self._advance_saga(outcome.error or {}, h.ERRORED)
        elif self._paused:
            in_flight = any(r.state == h.RUNNING and r.attempt_outcome is None
                            for r in self._records.values())
            outcome.status = h.WAITING_FOR_PAUSE if in_flight else h.PAUSED
        elif any(r.state == h.RUNNING for r in self._records.values()):
            outcome.status = h.STATUS_RUNNING
        elif any(not r.completed for r in self._records.values()):
            outcome.status = h.STATUS_WAITING
        else:
            outcome.status, outcome.error = h.ERRORED, error_dict(NonDeterminismError(
                "run() is blocked on an awaitable that is not a Warren step, so it can never "
                "continue; await only step.do / step.sleep / step.wait_for_event results"
            ))
        if outcome.finished:
            # Nothing more will run: drop decisions that would start work or set timers.
            outcome.attempts.clear()
            outcome.timers_set.clear()
            outcome.timers_cleared.extend(
                r.key for r in self._records.values() if r.state in (h.BACKOFF, h.WAITING)
            )
            outcome.loose_ends = any(r.state == h.RUNNING for r in self._records.values())

    def _finish(self, task: asyncio.Task[Any]) -> None:
        outcome = self.outcome
        if task.cancelled():
            outcome.status = h.ERRORED
            outcome.error = {"name": "CancelledError", "message": "run() was cancelled"}
            return
        exc = task.exception()
        if exc is not None:
            outcome.status, outcome.error = h.ERRORED, error_dict(exc)
            return
        try:
            validate_json_value(task.result(), what="workflow output")
        except ValidationError as invalid:
            outcome.status, outcome.error = h.ERRORED, error_dict(invalid)
            return
        outcome.status, outcome.output = h.COMPLETE, task.result()


def replay(
    workflow: type[WorkflowEntrypoint], instance: h.InstanceSnapshot, now_ms: int
) -> TurnOutcome:
    """Replay ``run()`` against the instance's history and return the turn's decisions."""
    return InstanceRun(workflow, instance, now_ms).run()


StepCallable = Callable[..., Any]
