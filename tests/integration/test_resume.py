"""A worker resumes the runs it keeps in memory instead of replaying them, and only while
the stored history is the one it committed (engine._resume_cache)."""

from __future__ import annotations

import asyncio
from typing import Any

from engine._clock import now_ms
from engine._store._database import Database
from engine._store._sweeps import stale_steps_txn
from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.stacks import Stack

STARTS: list[str] = []


class Counted(WorkflowEntrypoint):
    """Twenty sequential steps; records every time ``run()`` starts from the top."""

    name = "counted"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        STARTS.append(event.instance_id)
        total = 0
        for i in range(20):
            total += await step.do(f"add-{i}", lambda i=i: i)
        return total


async def test_a_continuing_instance_is_resumed_not_replayed(stack: Stack) -> None:
    STARTS.clear()
    async with stack.running([Counted]) as client:
        inst = await client.workflow("counted").create(id="kept")
        status = await inst.wait_for_status("complete", timeout=30)
    assert status.output == sum(range(20))
    # One start for 21 turns: each step's turn resumed the run the previous turn left.
    assert STARTS == ["kept"]

    STARTS.clear()
    async with stack.running([Counted], resume_cache_steps=0) as client:
        inst = await client.workflow("counted").create(id="replayed")
        status = await inst.wait_for_status("complete", timeout=30)
    assert status.output == sum(range(20))
    assert STARTS == ["replayed"] * 21  # with nothing kept, every turn replays


class Gated(WorkflowEntrypoint):
    """One step whose first attempt waits for the test to open the gate."""

    name = "gated"
    started = asyncio.Event()
    gate = asyncio.Event()

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def body(ctx: Any) -> str:
            if ctx.attempt > 1:
                return "second attempt"
            Gated.started.set()
            await Gated.gate.wait()
            return "first attempt"

        return await step.do("slow", body, retries={"limit": 2, "delay": 0.1})


async def test_history_changed_outside_a_turn_is_replayed_not_resumed(stack: Stack) -> None:
    Gated.started, Gated.gate = asyncio.Event(), asyncio.Event()
    async with stack.running([Gated]) as client:
        inst = await client.workflow("gated").create(id="lost")
        await asyncio.wait_for(Gated.started.wait(), 10)
        # The sweeper of some worker takes the attempt for lost (as when its heartbeats
        # stop) while the run that started it is kept in memory here.
        db = Database(stack.database_url)
        try:
            async with db.transaction() as conn:
                pokes = await stale_steps_txn(conn, ["gated"], now_ms() + 3_600_000,
                                              heartbeat_timeout_ms=0, limit=10)
        finally:
            await db.close()
        assert pokes == [("gated", "lost")]
        Gated.gate.set()
        status = await inst.wait_for_status("complete", timeout=20)
    # The late result of the lost attempt is not applied: the kept run was not resumed, the
    # history was loaded, and the step was retried as the stored history says.
    assert status.output == "second attempt"
    attempts = status.steps[0]["attempts"]
    assert [a["success"] for a in attempts] == [False, True]
    assert attempts[0]["error"]["name"] == "WorkerLostError"
