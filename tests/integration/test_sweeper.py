"""The sweeper re-issues lost wake-ups, ever less often, and never loses one to a broker error."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from broker import broker_from_url
from engine._clock import now_ms
from engine._store._database import Database
from engine._store._schema import steps, timers
from engine._sweeper import Sweeper
from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.stacks import Stack

GRACE_MS = 500


class Napper(WorkflowEntrypoint):
    name = "napper"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", "1 hour")
        return await step.do("after", lambda: "awake")


async def _asleep_and_ten_seconds_overdue(stack: Stack, db: Database) -> None:
    """A napper whose wake-up message is lost: no worker, wake time 10 s ago."""
    async with stack.running([Napper]) as client:
        inst = await client.workflow("napper").create(id="nap-1")
        await inst.wait_for_status("waiting", timeout=10)
    overdue = now_ms() - 10_000
    async with db.transaction() as conn:
        await conn.execute(update(steps).where(steps.c.kind == "sleep")
                           .values(wake_at_ms=overdue))
        await conn.execute(update(timers).values(due_at_ms=overdue))


def _sweeper(db: Database, broker: Any) -> Sweeper:
    return Sweeper(db, broker, worker_id="sweeper-test", served=["napper"], interval_s=60,
                   grace_ms=GRACE_MS, heartbeat_timeout_ms=60_000, retention_ms=86_400_000)


async def _timer_due(db: Database) -> int:
    async with db.reading() as conn:
        return int((await conn.execute(select(timers.c.due_at_ms))).scalar_one())


async def test_an_overdue_wake_up_is_reissued_then_left_alone_while_it_is_in_flight(
    stack: Stack,
) -> None:
    db = Database(stack.database_url)
    broker = broker_from_url(stack.broker_url, stack.namespace)
    try:
        await _asleep_and_ten_seconds_overdue(stack, db)
        await broker.connect()
        sweeper = _sweeper(db, broker)
        swept_at = now_ms()
        assert await sweeper.sweep_once() == 1
        assert await broker.queue_depth("napper") == 1  # type: ignore[attr-defined]
        # Ten seconds late means queued behind load far more often than lost: the next
        # re-issue waits as long again, not one grace period.
        assert await _timer_due(db) >= swept_at + 10_000
        assert await sweeper.sweep_once() == 0
        assert await broker.queue_depth("napper") == 1  # type: ignore[attr-defined]
    finally:
        await broker.close()
        await db.close()


async def test_a_reissue_the_broker_refuses_is_retried_at_the_next_sweep(stack: Stack) -> None:
    db = Database(stack.database_url)
    broker = broker_from_url(stack.broker_url, stack.namespace)  # never connected: refuses
    try:
        await _asleep_and_ten_seconds_overdue(stack, db)
        due = await _timer_due(db)
        with pytest.raises(RuntimeError, match="not connected"):
            await _sweeper(db, broker).sweep_once()
        assert await _timer_due(db) == due  # not pushed back: the wake-up was not sent
        await broker.connect()
        assert await _sweeper(db, broker).sweep_once() == 1
        assert await broker.queue_depth("napper") == 1  # type: ignore[attr-defined]
    finally:
        await broker.close()
        await db.close()
