"""Saga rollback rules (Cloudflare's semantics), driven by the storage-free simulator."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from sdk import StepFailedError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.unit.simulator import Simulation

pytestmark = pytest.mark.usefixtures("both_turn_kinds")

LOG: list[Any] = []


def _fail(message: str = "boom") -> Any:
    def body() -> None:
        raise RuntimeError(message)
    return body


def _undo(name: str) -> Any:
    async def handler(ctx: Any) -> None:
        LOG.append((name, ctx.output, ctx.error["message"], ctx.step.name))
    return handler


class ThreeHandlers(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("one", lambda: 1, rollback=_undo("one"))
        await step.do("two", lambda: 2, rollback=_undo("two"))

        @step.do("three", retries={"limit": 0})
        def three() -> None:
            raise RuntimeError("three broke")

        @three.rollback
        async def undo_three(ctx: Any) -> None:
            LOG.append(("three", ctx.output, ctx.error["message"], ctx.step.name))

        await three()


async def test_handlers_run_in_reverse_start_order_including_the_failing_step() -> None:
    LOG.clear()
    outcome = await Simulation(ThreeHandlers).run()
    assert outcome.status == "errored"
    assert outcome.error == {"name": "RuntimeError", "message": "three broke"}
    assert outcome.rollback == {"outcome": "complete", "error": None}
    assert [entry[0] for entry in LOG] == ["three", "two", "one"]
    assert LOG[0][1] is None  # the failing step has no output
    assert LOG[1][1] == 2 and LOG[2][1] == 1
    assert all(entry[2] == "three broke" for entry in LOG)


class Parallel(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def slow() -> str:
            await asyncio.sleep(0.05)
            return "x"

        await asyncio.gather(step.do("X", slow, rollback=_undo("X")),
                             step.do("Y", lambda: "y", rollback=_undo("Y")))
        await step.do("fail", _fail(), retries={"limit": 0})


async def test_parallel_steps_compensate_by_start_order_not_completion_order() -> None:
    LOG.clear()
    outcome = await Simulation(Parallel).run()
    assert outcome.status == "errored"
    assert [entry[0] for entry in LOG] == ["Y", "X"]


class CaughtThenFatal(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        with contextlib.suppress(StepFailedError):
            await step.do("flaky", _fail("caught"), retries={"limit": 0},
                          rollback=_undo("flaky"))
        await step.do("ok", lambda: "fine", rollback=_undo("ok"))
        if event.payload.get("fatal"):
            raise RuntimeError("fatal later")
        return "survived"


async def test_caught_error_starts_no_rollback_but_a_later_failure_includes_that_step() -> None:
    LOG.clear()
    survived = await Simulation(CaughtThenFatal, params={}).run()
    assert survived.status == "complete" and survived.rollback is None and LOG == []
    fatal = await Simulation(CaughtThenFatal, params={"fatal": True}).run()
    assert fatal.status == "errored" and fatal.error == {"name": "RuntimeError",
                                                         "message": "fatal later"}
    assert [entry[0] for entry in LOG] == ["ok", "flaky"]


ATTEMPTS: list[int] = []


class BrokenHandler(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def broken(ctx: Any) -> None:
            ATTEMPTS.append(1)
            raise ConnectionError("refund service down")

        await step.do("first", lambda: 1, rollback=_undo("first"))
        await step.do("second", lambda: 2, rollback=broken,
                      rollback_config={"retries": {"limit": 2, "delay": "1 second"},
                                       "timeout": "5 seconds"})
        await step.do("third", lambda: 3, rollback=_undo("third"))
        await step.do("fail", _fail("original"), retries={"limit": 0})


async def test_failing_handler_stops_the_rollback_and_keeps_the_original_error() -> None:
    LOG.clear()
    ATTEMPTS.clear()
    sim = Simulation(BrokenHandler)
    outcome = await sim.run()
    assert outcome.status == "errored"
    assert outcome.error == {"name": "RuntimeError", "message": "original"}
    assert outcome.rollback == {"outcome": "failed", "error": {
        "name": "ConnectionError", "message": "refund service down"}}
    assert len(ATTEMPTS) == 3  # limit 2 → 3 attempts
    assert [entry[0] for entry in LOG] == ["third"]  # before it ran; after it did not
    kinds = [kind for turn in sim.turns for kind, _ in turn.step_events]
    assert kinds.count("rollback.started") == 1 and kinds[-1] == "rollback.finished"
    assert "rollback.step.failed" in kinds and "rollback.step.succeeded" in kinds
    # A handler's retries are the rollback's, as its start and end are (README, lifecycle).
    assert kinds.count("rollback.step.retrying") == 2 and "step.retrying" not in kinds


SEEN_ERRORS: list[Any] = []


class RetriedHandler(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def flaky_undo(ctx: Any) -> None:
            SEEN_ERRORS.append(dict(ctx.error))
            if len(SEEN_ERRORS) < 3:
                raise ConnectionError("try again")

        await step.do("one", lambda: 1, rollback=flaky_undo,
                      rollback_config={"retries": {"limit": 3, "delay": "1 second"}})
        await step.do("fail", _fail("the cause"), retries={"limit": 0})


async def test_retried_handlers_still_see_the_error_that_started_the_rollback() -> None:
    SEEN_ERRORS.clear()
    sim = Simulation(RetriedHandler)
    outcome = await sim.run()
    assert outcome.rollback == {"outcome": "complete", "error": None}
    assert len(SEEN_ERRORS) == 3
    assert all(e == {"name": "RuntimeError", "message": "the cause"} for e in SEEN_ERRORS)
    # A handler backing off before its retry leaves the instance waiting, as a step's
    # retry does (API.md §6), not running.
    retrying = [t.status for t in sim.turns
                if any(kind == "rollback.step.retrying" for kind, _ in t.step_events)]
    assert retrying == ["waiting", "waiting"]


class SlowForward(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await asyncio.gather(
            step.do("slow", lambda: "done", rollback=_undo("slow")),
            step.do("fail", _fail("fast failure"), retries={"limit": 0}),
        )


async def test_compensation_waits_for_in_flight_steps_to_settle() -> None:
    LOG.clear()
    sim = Simulation(SlowForward)
    first = sim.turn()
    assert sorted(a.name for a in first.attempts) == ["fail", "slow"]
    # only "fail" finishes: the rollback must not start while "slow" is still in flight
    await sim.run_attempts(type(first)(attempts=[a for a in first.attempts if a.name == "fail"]))
    waiting = sim.turn()
    assert waiting.status == "running" and not waiting.attempts and LOG == []
    await sim.run_attempts(type(first)(attempts=[a for a in first.attempts if a.name == "slow"]))
    outcome = await sim.run()
    assert outcome.status == "errored" and [e[0] for e in LOG] == ["slow"]
    assert LOG[0][1] == "done"  # and it sees the output that landed meanwhile


class Terminating(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("a", lambda: "a", rollback=_undo("a"))
        await step.do("b", lambda: "b", rollback=_undo("b"))
        return "finished"


async def test_terminate_with_rollback_ends_terminated_even_if_run_completes_meanwhile() -> None:
    LOG.clear()
    sim = Simulation(Terminating)
    await sim.run_attempts(sim.turn())
    in_flight = sim.turn()  # "b" started
    sim.control = {"op": "terminate", "rollback": True}
    await sim.run_attempts(in_flight)  # "b" lands after the terminate: run() can now return
    outcome = await sim.run()
    assert outcome.status == "terminated"
    assert outcome.rollback == {"outcome": "complete", "error": None}
    assert [e[0] for e in LOG] == ["b", "a"]
