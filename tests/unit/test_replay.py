"""Semantics of the replay executor, driven without any service."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from sdk import NonRetryableError, StepFailedError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.unit.simulator import Simulation

pytestmark = pytest.mark.usefixtures("both_turn_kinds")

CALLS: list[str] = []


class ThreeSteps(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        a = await step.do("a", lambda: CALLS.append("a") or 1)
        b = await step.do("b", lambda: CALLS.append("b") or a + 1)
        c = await step.do("c", lambda: CALLS.append("c") or b + 1)
        return {"sum": a + b + c}


async def test_sequential_steps_run_once_each_and_complete() -> None:
    CALLS.clear()
    sim = Simulation(ThreeSteps)
    outcome = await sim.run()
    assert outcome.status == "complete"
    assert outcome.output == {"sum": 6}
    assert CALLS == ["a", "b", "c"]
    assert len(sim.turns) == 4  # one turn per step result, plus the first


class Flaky(WorkflowEntrypoint):
    failures = 2

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def body(ctx: Any) -> str:
            if ctx.attempt <= Flaky.failures:
                raise RuntimeError(f"boom {ctx.attempt}")
            return "ok"
        return await step.do("flaky", body, retries={"limit": 5, "delay": "1 second",
                                                       "backoff": "exponential"})


async def test_retries_follow_exponential_backoff() -> None:
    sim = Simulation(Flaky)
    start = sim.now_ms
    outcome = await sim.run()
    assert outcome.status == "complete" and outcome.output == "ok"
    times = [at - start for key, _, at in sim.attempt_log]
    assert times == [0, 1000, 3000]  # waits of 1 s then 2 s
    assert sim.steps["flaky#1"].attempt == 3
    # The attempt log keeps the two failures; the step's row describes the third.
    assert [(f.attempt, f.started_at_ms - start, f.error and f.error["message"])
            for f in sim.failure_log] == [(1, 0, "boom 1"), (2, 1000, "boom 2")]
    assert sim.steps["flaky#1"].attempt_started_at_ms == start + 3000


class Changed(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("other", lambda: 1)


async def test_a_failure_is_not_logged_while_the_code_no_longer_calls_its_step() -> None:
    Flaky.failures = 1
    sim = Simulation(Flaky, resume_in_memory=False)  # new code: a new process replays
    await sim.run_attempts(sim.turn())  # attempt 1 fails; its result is stored
    sim.workflow = Changed  # the code changed: no call of "flaky" any more
    for _ in range(2):  # each replay finds the same stored failure
        outcome = sim.turn()
        assert outcome.status == "errored" and outcome.failed_attempts == []
    assert sim.failure_log == [] and sim.steps["flaky#1"].attempt_outcome == "error"
    Flaky.failures = 2


class Linear(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def fail() -> None:
            raise RuntimeError("always")
        try:
            await step.do("lin", fail, retries={"limit": 3, "delay": 100, "backoff": "linear"})
        except StepFailedError as exc:
            return {"caught": exc.error_name, "message": exc.error_message}


async def test_exhausted_retries_raise_step_failed_into_run() -> None:
    sim = Simulation(Linear)
    start = sim.now_ms
    outcome = await sim.run()
    assert outcome.status == "complete"
    assert outcome.output == {"caught": "RuntimeError", "message": "always"}
    assert [at - start for _, _, at in sim.attempt_log] == [0, 100_000, 300_000, 600_000]


class NoRetry(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def fail() -> None:
            raise NonRetryableError("bad input")
        await step.do("once", fail)


async def test_non_retryable_error_stops_at_one_attempt_and_errors_instance() -> None:
    sim = Simulation(NoRetry)
    outcome = await sim.run()
    assert outcome.status == "errored"
    assert outcome.error == {"name": "NonRetryableError", "message": "bad input"}
    assert len(sim.attempt_log) == 1
    # Subscribers see the error as the status JSON shows it, without the engine's flags.
    failed = [d for turn in sim.turns for k, d in turn.step_events if k == "step.failed"]
    assert [d["error"] for d in failed] == [{"name": "NonRetryableError", "message": "bad input"}]


class AttemptAbandonedError(Exception):
    """A step's own exception that shares the name of the engine's cut-off attempts."""


class SharesTheEnginesName(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def fail() -> None:
            raise AttemptAbandonedError("mine")
        await step.do("once", fail, retries={"limit": 0})


async def test_an_error_named_like_an_abandoned_attempt_still_counts_against_retries() -> None:
    sim = Simulation(SharesTheEnginesName)
    outcome = await sim.run(max_turns=50)
    assert outcome.status == "errored"
    assert len(sim.attempt_log) == 1


class BadSleepName(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        name = event.payload["name"]
        if event.payload["kind"] == "sleep":
            await step.sleep(name, 1)
        else:
            await step.wait_for_event(name, "go")


@pytest.mark.parametrize("kind", ["sleep", "wait_for_event"])
@pytest.mark.parametrize(("name", "error"), [("x" * 257, "LimitExceededError"),
                                             (None, "ValidationError")])
async def test_every_step_kind_checks_its_name(kind: str, name: Any, error: str) -> None:
    outcome = await Simulation(BadSleepName, params={"kind": kind, "name": name}).run()
    assert outcome.status == "errored"
    assert outcome.error is not None and outcome.error["name"] == error
    assert outcome.inserted == []  # nothing of it reaches the store


async def test_a_recorded_step_replays_whatever_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """History written by a build that did not check sleep names still replays."""
    from engine import _replay

    sim = Simulation(BadSleepName, params={"kind": "sleep", "name": "x" * 300})
    with monkeypatch.context() as older_build:
        older_build.setattr(_replay, "check_step_name", lambda name: name)
        assert sim.turn().status == "waiting"  # the sleep is recorded
    outcome = await sim.run()
    assert outcome.status == "complete", outcome.error


class Parallel(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        results = await asyncio.gather(*(step.do(f"p{i}", lambda i=i: i * i) for i in range(10)))
        return list(results)


async def test_gather_starts_all_steps_in_one_turn() -> None:
    sim = Simulation(Parallel)
    first = sim.turn()
    assert len(first.attempts) == 10
    await sim.run_attempts(first)
    outcome = await sim.run()
    assert outcome.output == [i * i for i in range(10)]


class Dag(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        @step.do("left")
        async def left() -> str:
            CALLS.append("left")
            return "L"

        @step.do("right")
        def right() -> str:
            CALLS.append("right")
            return "R"

        @step.do("join", depends=[left, right], concurrent=True)
        async def join(l_result: str, r_result: str) -> str:
            return l_result + r_result

        @step.do("by-name")
        async def by_name(left: str) -> str:  # parameter named after a step: its result
            return left * 2

        return [await join(), await by_name()]


async def test_dag_dependencies_passed_in_order_and_run_once() -> None:
    CALLS.clear()
    sim = Simulation(Dag)
    first = sim.turn()
    assert sorted(a.name for a in first.attempts) == ["left", "right"]  # concurrent deps
    await sim.run_attempts(first)
    outcome = await sim.run()
    assert outcome.output == ["LR", "LL"]
    assert sorted(CALLS) == ["left", "right"]


class Sleeper(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", "2 seconds")
        await step.sleep_until("until", datetime.fromtimestamp(1_700_000_100, tz=UTC))
        return "rested"


async def test_sleeps_wake_no_earlier_than_due() -> None:
    sim = Simulation(Sleeper)
    start = sim.now_ms
    first = sim.turn()
    assert first.status == "waiting" and first.timers_set == {"nap#1": start + 2000}
    sim.now_ms = start + 1999
    early = sim.turn()
    assert early.status == "waiting" and not early.timers_set
    outcome = await sim.run()
    assert outcome.status == "complete"
    assert sim.now_ms == 1_700_000_100_000


class Diverges(WorkflowEntrypoint):
    version = 1

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("first", lambda: 1)
        if Diverges.version == 1:
            await step.do("second", lambda: 2)
        else:
            await step.sleep("second", 5)
        return "done"


async def test_changed_code_fails_with_non_determinism_naming_the_step() -> None:
    Diverges.version = 1
    sim = Simulation(Diverges)
    await sim.run_attempts(sim.turn())
    sim.turn()  # "second" is now in history as a do step
    Diverges.version = 2
    sim.restart_worker()  # new code means new worker processes: nothing kept in memory
    outcome = sim.turn()
    assert outcome.status == "errored"
    assert outcome.error is not None and outcome.error["name"] == "NonDeterminismError"
    assert "'second'" in outcome.error["message"]


class UsesAsyncioSleep(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await asyncio.sleep(1)


async def test_real_time_in_run_is_a_clear_error_not_a_hang() -> None:
    outcome = Simulation(UsesAsyncioSleep).turn()
    assert outcome.status == "errored"
    assert "step.sleep" in (outcome.error or {})["message"]


class Race(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        slow = step.sleep("slow", 10)
        fast = step.sleep("fast", 5)
        done, _ = await asyncio.wait([asyncio.ensure_future(slow), asyncio.ensure_future(fast)],
                                     return_when=asyncio.FIRST_COMPLETED)
        return "fast" if asyncio.ensure_future(fast) in done else "slow"


async def test_race_replays_the_same_branch_after_both_complete() -> None:
    sim = Simulation(Race)
    sim.turn()
    sim.now_ms += 5000
    assert sim.turn().output == "fast"
    sim.now_ms += 10_000  # the loser has fired too by a later replay: still the same branch
    assert sim.turn().output == "fast"


class BadOutput(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("obj", lambda: object())


async def test_non_json_step_output_fails_the_step_without_retries() -> None:
    sim = Simulation(BadOutput)
    outcome = await sim.run()
    assert outcome.status == "errored"
    assert "JSON" in (outcome.error or {})["message"]
    assert len(sim.attempt_log) == 1


@pytest.mark.parametrize("bad", ["10 lightyears", -1, "soon", float("nan")])
async def test_bad_durations_are_clear_value_errors(bad: Any) -> None:
    from sdk import parse_duration

    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


class LateEvent(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        from sdk import WorkflowTimeoutError

        try:
            got = await step.wait_for_event("reply", "reply", timeout="2 seconds")
            return got.payload
        except WorkflowTimeoutError:
            return "timed out"


async def test_event_after_the_deadline_does_not_satisfy_a_late_timed_out_wait() -> None:
    from engine._history import PendingEvent

    sim = Simulation(LateEvent)
    start = sim.now_ms
    sim.turn()
    sim.now_ms = start + 5000  # the timeout's wake-up ran late; an event came after the deadline
    sim.events.append(PendingEvent(1, "reply", {"late": True}, start + 3000))
    assert sim.turn().output == "timed out"
    early = Simulation(LateEvent)
    early.turn()
    early.now_ms += 5000
    early.events.append(PendingEvent(1, "reply", {"on": "time"}, early.now_ms - 4000))
    assert early.turn().output == {"on": "time"}


async def test_a_resumed_run_continues_in_memory_and_decides_what_a_replay_decides() -> None:
    CALLS.clear()
    sim = Simulation(ThreeSteps, resume_in_memory=True)
    outcome = await sim.run()  # each resumed turn is checked against a replay by the simulator
    assert outcome.status == "complete" and outcome.output == {"sum": 6}
    assert CALLS == ["a", "b", "c"]
    assert sim.resumed_turns == 3  # every turn after the first


async def test_a_run_replayed_while_its_step_is_in_flight_resumes_with_that_steps_result() -> None:
    # A turn of another worker (or one that found no run kept) replays from history while a
    # step is in flight; the run it leaves must still take that step's result when resumed.
    sim = Simulation(ThreeSteps, resume_in_memory=True)
    first = sim.turn()  # starts "a"
    sim.restart_worker()
    assert sim.turn().attempts == []  # "a" is still running: nothing new to start
    await sim.run_attempts(first)
    outcome = await sim.run()
    assert outcome.status == "complete" and outcome.output == {"sum": 6}
    assert sim.resumed_turns == 3
