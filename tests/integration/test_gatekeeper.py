"""Acceptance of the gatekeeper: slots, queueing, priority wake-ups, fairness, rate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from benchmarks._stats import max_overlap
from engine._store._gates import SlotsContended
from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.helpers import eventually
from tests.stacks import Stack

INTERVALS: list[tuple[float, float]] = []
STARTS: list[tuple[str, str, float]] = []  # (workflow, instance, time)


class Limited(WorkflowEntrypoint):
    max_concurrency = 5

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def work() -> None:
            began = time.monotonic()
            await asyncio.sleep(0.2)
            INTERVALS.append((began, time.monotonic()))

        await step.do("first", work)
        await step.do("second", work)


async def test_never_more_than_max_concurrency_running(stack: Stack) -> None:
    INTERVALS.clear()
    async with stack.running([Limited]) as client:
        wf = client.workflow("limited")
        instances = await wf.create_batch([{"params": i} for i in range(50)])
        counts = await wf.counts()
        assert counts["running"] <= 5
        for inst in instances:
            await inst.wait_for_status("complete", timeout=60)
        final = await wf.counts()
    assert len(INTERVALS) == 100
    assert max_overlap(INTERVALS) == 5  # the limit was reached, never exceeded
    assert final["running"] == 0 and final["queued"] == 0 and final["max_running"] == 5


class Napper(WorkflowEntrypoint):
    max_concurrency = 10

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("before", lambda: None)
        await step.sleep("nap", "3 seconds")
        await step.do("after", lambda: None)


async def test_sleeping_instances_hold_no_slot(stack: Stack) -> None:
    from datetime import datetime

    async with stack.running([Napper]) as client:
        wf = client.workflow("napper")
        started = time.monotonic()
        instances = await wf.create_batch([{"params": i} for i in range(100)])
        statuses = [await inst.wait_for_status("complete", timeout=60) for inst in instances]
        elapsed = time.monotonic() - started
    naps = [next(s for s in st.steps if s["name"] == "nap") for st in statuses]
    intervals = [(datetime.fromisoformat(n["start"]).timestamp(),
                  datetime.fromisoformat(n["end"]).timestamp()) for n in naps]
    # Were sleepers holding slots, at most 10 could sleep at once and this would take 30 s.
    # (How far above 10 depends on how fast a loaded machine starts them.)
    assert max_overlap(intervals) >= 20
    assert elapsed < 20, f"100 sleeps of 3 s at concurrency 10 took {elapsed:.1f}s"


async def _counts_match(wf: Any, **expected: int) -> bool:
    counts = await wf.counts()
    return all(counts[k] == v for k, v in expected.items())


class Gate(WorkflowEntrypoint):
    max_concurrency = 1

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        role = event.payload["role"]
        if role == "sleeper":
            await step.sleep("nap", "1 second")
        elif role == "blocker":
            await step.do("block", lambda: asyncio.sleep(2.5))
        await step.do("work", lambda: STARTS.append(("gate", role, time.monotonic())))


async def test_woken_instance_takes_a_slot_before_queued_new_ones(stack: Stack) -> None:
    STARTS.clear()
    async with stack.running([Gate]) as client:
        wf = client.workflow("gate")
        sleeper = await wf.create(params={"role": "sleeper"})
        await sleeper.wait_for_status("waiting", timeout=10)
        await wf.create(params={"role": "blocker"})
        await eventually(lambda: _counts_match(wf, running=1), timeout=10)
        queued = await wf.create_batch([{"params": {"role": "new"}}] * 20)
        await eventually(lambda: _counts_match(wf, queued=20), timeout=10)
        # the sleeper wakes while the blocker holds the only slot: it queues with priority
        await eventually(lambda: _counts_match(wf, queued=21), timeout=10)
        for inst in queued:
            await inst.wait_for_status("complete", timeout=60)
        await sleeper.wait_for_status("complete", timeout=10)
    order = [role for _, role, _ in sorted(STARTS, key=lambda s: s[2])]
    assert order[:2] == ["blocker", "sleeper"], order[:5]
    assert order[2:] == ["new"] * 20


class Flood(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("work", lambda: _record("flood", event.instance_id))


class Trickle(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("work", lambda: _record("trickle", event.instance_id))


async def _record(workflow: str, instance_id: str) -> None:
    STARTS.append((workflow, instance_id, time.monotonic()))
    await asyncio.sleep(0.05)


async def test_a_flood_cannot_starve_another_workflow(stack: Stack) -> None:
    STARTS.clear()
    async with stack.running([Flood, Trickle], max_concurrency=10) as client:
        flood = client.workflow("flood")
        for _ in range(20):
            await flood.create_batch([{"params": None}] * 100)
        await eventually(lambda: _counts_match(flood, running=10), timeout=20)
        trickle_wf = client.workflow("trickle")
        trickle = await trickle_wf.create_batch([{"params": None}] * 20)

        async def all_in_line() -> bool:  # each has had its first turn: queued or admitted
            counts = await trickle_wf.counts()
            return bool(counts["queued"] + counts["running"] == 20)

        await eventually(all_in_line, timeout=20)
        mark = len(STARTS)
        for inst in trickle:
            await inst.wait_for_status("complete", timeout=60)
    after = [wf for wf, _, _ in sorted(STARTS[mark:], key=lambda s: s[2])]
    last_trickle = max(i for i, wf in enumerate(after) if wf == "trickle")
    # Max-min fairness: once in line, the 20 are admitted within ~4 rounds of 10 admissions
    # (plus the flood's already admitted steps still starting), not after the 2,000 queued
    # before them.
    assert last_trickle < 50, f"trickle finished admission at start #{last_trickle}"


class RateLimited(WorkflowEntrypoint):
    max_creation_rate = 5.0

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("work", lambda: STARTS.append(("rate", event.instance_id,
                                                     time.monotonic())))


async def test_creation_rate_limit_queues_excess_instead_of_failing(stack: Stack) -> None:
    STARTS.clear()
    async with stack.running([RateLimited]) as client:
        wf = client.workflow("rate-limited")
        instances = await wf.create_batch([{"params": None}] * 15)
        for inst in instances:
            await inst.wait_for_status("complete", timeout=30)
    times = sorted(t for _, _, t in STARTS)
    # burst of 5, then 5 per second: 15 admissions need at least ~2 seconds
    assert times[-1] - times[0] >= 1.5


class Single(WorkflowEntrypoint):
    max_concurrency = 1

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("work", lambda: asyncio.sleep(event.payload["hold"]))
        return event.payload["hold"]


async def test_resumed_instance_refused_a_slot_queues_and_runs_later(stack: Stack) -> None:
    async with stack.running([Single]) as client:
        wf = client.workflow("single")
        holder = await wf.create(params={"hold": 2.0})
        await eventually(lambda: _counts_match(wf, running=1), timeout=10)
        other = await wf.create(params={"hold": 0.1})
        await other.wait_for_status("queued", timeout=10)
        await other.pause()
        await other.wait_for_status("paused", timeout=10)
        await other.resume()  # the slot is still taken: it must queue again, not get stuck
        await holder.wait_for_status("complete", timeout=20)
        st = await other.wait_for_status("complete", timeout=20)
        final = await wf.counts()
    assert st.output == 0.1
    assert (final["running"], final["queued"]) == (0, 0)


class Unlimited(WorkflowEntrypoint):
    name = "unlimited"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("one", lambda: 1)
        await step.sleep("nap", 0.05)  # gives its slot back, then takes one again
        return await step.do("two", lambda: 2)


async def test_far_from_any_limit_slots_are_taken_without_locking_the_gates(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import _turn_loop
    from engine._store import _turns

    calls = {"settle": 0, "count": 0, "contended": 0}
    settle, count = _turns.settle_txn, _turns.count_slots_txn
    write_decided = _turn_loop.write_decided_turns

    async def counting_settle(*args: Any) -> Any:
        calls["settle"] += 1
        return await settle(*args)

    async def counting_count(*args: Any) -> None:
        calls["count"] += 1
        try:
            await count(*args)
        except SlotsContended:
            calls["contended"] += 1
            raise

    async def counting_write_decided(*args: Any) -> Any:
        # On PostgreSQL first and last turns count their slots in the statement that
        # writes them (engine._store._decided_turns).
        calls["count"] += 1
        try:
            return await write_decided(*args)
        except SlotsContended:
            calls["contended"] += 1
            raise

    monkeypatch.setattr(_turns, "settle_txn", counting_settle)
    monkeypatch.setattr(_turns, "count_slots_txn", counting_count)
    monkeypatch.setattr(_turn_loop, "write_decided_turns", counting_write_decided)
    async with stack.running([Unlimited, Limited]) as client:
        wf = client.workflow("unlimited")
        instances = await wf.create_batch([{"params": i} for i in range(20)])
        for inst in instances:
            assert (await inst.wait_for_status("complete", timeout=30)).output == 2
        assert (await wf.counts())["running"] == 0  # every slot taken was given back
        # Start, sleep, wake and end all moved slots; none of them locked the gates first.
        assert calls["settle"] == 0 and calls["contended"] == 0 and calls["count"] >= 4

        # Five slots are not "far from the limit": the optimistic count refuses, the turn is
        # redone under the gates' locks, and the limit holds.
        INTERVALS.clear()
        limited = client.workflow("limited")
        for inst in await limited.create_batch([{"params": i} for i in range(10)]):
            await inst.wait_for_status("complete", timeout=30)
        assert calls["contended"] >= 1 and calls["settle"] >= 1
        assert max_overlap(INTERVALS) <= 5
        assert (await limited.counts())["running"] == 0
