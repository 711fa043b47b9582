"""A step's result is applied by the worker that ran it, in the transaction that stores it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select

from broker import Envelope, OutgoingMessage
from engine._store._schema import instances
from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.helpers import eventually, record_driver_statements
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
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = stack.worker([FiveSteps])
    instance_writes = 0
    step_writes: list[str] = []
    driver_statements = record_driver_statements(worker.db, monkeypatch)

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
    for statement, args in driver_statements:
        if statement.lstrip().startswith("WITH turns AS"):  # turns decided ahead (PostgreSQL)
            # The row is written (not only its fence moved) where the turn says "write".
            turns = orjson.loads(_bound(args, "turns"))
            instance_writes += sum(1 for t in turns.values() if t["write"])
            step_writes.append(statement)
    # Per instance: queued -> running, then running -> complete. The four turns in between
    # each end a step and start the next, which leaves the instance row as it was.
    assert instance_writes == 2 * len(instances)
    # Ending one step and starting the next is one upsert, not an update and an insert.
    assert step_writes and all("ON CONFLICT" in s for s in step_writes), step_writes


async def test_on_postgresql_every_turn_of_a_step_sequence_is_one_statement(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the first turn (the create message announces the row), the turns
    that end a step and start the next, and the last turn (the instance completes) skip
    the lock, BEGIN and COMMIT; on SQLite each is a locked transaction."""
    worker = stack.worker([FiveSteps])
    locks = 0
    driver_statements = record_driver_statements(worker.db, monkeypatch)

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:
        nonlocal locks
        if statement.startswith("UPDATE warren_instances SET fence=CASE"):
            locks += 1

    event.listen(worker.db.engine.sync_engine, "before_cursor_execute", count)
    async with worker, stack.client() as client:
        inst = await client.workflow("five-steps").create(id="one-statement")
        assert (await inst.wait_for_status("complete", timeout=20)).output == 10
    continuations = sum(1 for statement, _ in driver_statements
                        if statement.lstrip().startswith("WITH turns AS"))
    if stack.database_url.startswith("postgresql"):
        assert (locks, continuations) == (0, 6)
    else:
        assert (locks, continuations) == (6, 0)


STEP_MAY_END = asyncio.Event()
STEP_STARTED = asyncio.Event()


async def _held_step() -> str:
    STEP_STARTED.set()
    await STEP_MAY_END.wait()
    return "held"


class EarlyEvent(WorkflowEntrypoint):
    """Its event arrives while a step runs, before ``run()`` waits for it."""

    name = "early-event"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        held = await step.do("held", _held_step)
        got = await step.wait_for_event("go", "go", timeout="1 hour")
        return [held, got.payload]


async def test_an_event_stored_while_a_step_runs_is_taken_when_the_run_reaches_its_wait(
    stack: Stack,
) -> None:
    """The turn after the step decides ahead of its lock that the run now waits; the event
    already stored must make the general turn replay with it instead of committing a wait
    that nothing would ever end."""
    STEP_STARTED.clear()
    STEP_MAY_END.clear()
    worker = stack.worker([EarlyEvent])
    async with worker, stack.client() as client:
        inst = await client.workflow("early-event").create(id="early")
        await asyncio.wait_for(STEP_STARTED.wait(), 10)

        async def fence() -> int:
            async with worker.db.reading() as conn:
                return int((await conn.execute(select(instances.c.fence).where(
                    instances.c.instance_id == "early"))).scalar_one())

        before = await fence()
        await inst.send_event("go", {"n": 1})
        # The event's own turn has run (it found the run still in its step) once the fence
        # moved: only then is the event stored and unconsumed, as this test needs.
        await eventually(lambda: _moved(fence, before), timeout=10, message="event turn")
        STEP_MAY_END.set()
        status = await inst.wait_for_status("complete", timeout=10)
    assert status.output == ["held", {"n": 1}]


def _bound(parameters: Any, name: str) -> Any:
    """A named parameter as the driver got it (asyncpg's are positional, in name order)."""
    if isinstance(parameters, dict):
        return parameters[name]
    return next(p for p in parameters if isinstance(p, str) and '"write":' in p)


async def _moved(fence: Any, before: int) -> bool:
    return bool(await fence() > before)


class EchoParams(WorkflowEntrypoint):
    name = "echo-params"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("echo", lambda: event.payload)


async def test_a_first_turn_decided_from_a_create_message_checks_the_row_it_announces(
    stack: Stack,
) -> None:
    """A create message that announces a stored row with other params (or a redelivered
    one, after the instance moved on) cannot run the instance on what it says: the turn
    it decided is not written, and the general turn runs the instance from its row."""
    from broker import STORED_HEADER, broker_from_url
    from engine._announced import CREATED_AT_HEADER, PK_HEADER

    worker = stack.worker([EchoParams])
    async with stack.client() as client:
        inst = await client.workflow("echo-params").create(id="genuine", params={"n": 1})
        async with worker.db.reading() as conn:
            pk, created_at_ms = (await conn.execute(
                select(instances.c.pk, instances.c.created_at_ms)
                .where(instances.c.instance_id == "genuine"))).one()
        forged = OutgoingMessage(
            "create", "echo-params", b'{"id": "genuine", "params": {"n": 2}}',
            message_id="forged-token",
            headers={STORED_HEADER: "1", PK_HEADER: str(pk),
                     CREATED_AT_HEADER: str(created_at_ms)})
        async with broker_from_url(stack.broker_url, stack.namespace) as raw:
            # Queued behind the genuine message: the worker starts with both waiting, so
            # they may share a batch, where the later one's announcement is the one used.
            await raw.publish([forged])
            async with worker:
                assert (await inst.wait_for_status("complete", timeout=20)).output == {"n": 1}
                await raw.publish([forged])  # now the instance has moved on: nothing to do
                # Queued behind the forged message: once it completes, that one was taken.
                later = await client.workflow("echo-params").create(params={"n": 3})
                assert (await later.wait_for_status("complete", timeout=20)).output == {"n": 3}
                status = await inst.status()
    assert status.output == {"n": 1} and len(status.steps) == 1
    assert [len(s["attempts"]) for s in status.steps] == [1]
