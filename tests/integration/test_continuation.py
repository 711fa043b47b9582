"""A step's result is applied by the worker that ran it, in the transaction that stores it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import event

from broker import Envelope, OutgoingMessage
from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.stacks import Stack


class FiveSteps(WorkflowEntrypoint):
    name = "five-steps"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        total = 0
        for i in range(5):
            total += await step.do(f"add-{i}", lambda i=i: i)
        return total


async def test_the_next_turn_follows_a_step_without_a_broker_round_trip(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = stack.worker([FiveSteps])
    turns: list[str] = []
    publish = worker.broker.publish

    async def recording(messages: Sequence[OutgoingMessage]) -> None:
        turns.extend(Envelope.decode(m.body).kind for m in messages if m.exchange == "internal")
        await publish(messages)

    monkeypatch.setattr(worker.broker, "publish", recording)
    async with worker, stack.client() as client:
        instances = await client.workflow("five-steps").create_batch(
            [{"id": f"cont-{i}"} for i in range(10)])
        for inst in instances:
            status = await inst.wait_for_status("complete", timeout=20)
            assert status.output == 10
            assert [s["attempts"][0]["success"] for s in status.steps] == [True] * 5
    # Fifty step results, not one of them announced through the broker: each was stored
    # together with the lease of the turn that applied it, on the worker that ran the step.
    assert "step" not in turns, turns


async def test_a_turn_writes_the_instance_row_only_when_its_outcome_changes_it(
    stack: Stack,
) -> None:
    worker = stack.worker([FiveSteps])
    instance_writes = 0
    step_writes: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:
        nonlocal instance_writes
        if statement.startswith("UPDATE warren_instances SET status="):
            instance_writes += len(parameters) if executemany else 1
        elif statement.startswith(("INSERT INTO warren_steps", "UPDATE warren_steps SET name=")):
            step_writes.append(statement)

    event.listen(worker.db.engine.sync_engine, "before_cursor_execute", count)
    async with worker, stack.client() as client:
        instances = await client.workflow("five-steps").create_batch(
            [{"id": f"rows-{i}"} for i in range(10)])
        for inst in instances:
            assert (await inst.wait_for_status("complete", timeout=20)).output == 10
    # Per instance: queued -> running, then running -> complete. The four turns in between
    # each end a step and start the next, which leaves the instance row as it was.
    assert instance_writes == 2 * len(instances)
    # Ending one step and starting the next is one upsert, not an update and an insert.
    assert step_writes and all("ON CONFLICT" in s for s in step_writes), step_writes
