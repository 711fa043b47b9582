"""The sweeper re-issues lost wake-ups, ever less often, and never loses one to a broker error;
it starts instances whose create message the broker lost, but leaves a queue's backlog alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import orjson
import pytest
from sqlalchemy import select, update

from broker import Broker, Delivery, OutgoingMessage, PublishError, broker_from_url
from broker._topology import Topology
from engine._clock import now_ms
from engine._store._database import Database
from engine._store._schema import steps, timers
from engine._sweeper import LOST_CREATE_GRACE_MS, Sweeper
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


class Quick(WorkflowEntrypoint):
    name = "quick"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("only", lambda: "done")


def _sweeper(db: Database, broker: Broker, served: str = "napper",
             lost_create_grace_ms: int = LOST_CREATE_GRACE_MS) -> Sweeper:
    return Sweeper(db, broker, worker_id="sweeper-test", served=[served], interval_s=60,
                   grace_ms=GRACE_MS, heartbeat_timeout_ms=60_000, retention_ms=86_400_000,
                   lost_create_grace_ms=lost_create_grace_ms)


@contextlib.asynccontextmanager
async def _store_and_broker(stack: Stack) -> AsyncIterator[tuple[Database, Broker]]:
    """The stack's store and a broker handle (not connected yet), closed afterwards."""
    db = Database(stack.database_url)
    broker = broker_from_url(stack.broker_url, stack.namespace)
    try:
        yield db, broker
    finally:
        await broker.close()
        await db.close()


async def _timer_due(db: Database) -> int:
    async with db.reading() as conn:
        return int((await conn.execute(select(timers.c.due_at_ms))).scalar_one())


async def test_an_overdue_wake_up_is_reissued_then_left_alone_while_it_is_in_flight(
    stack: Stack,
) -> None:
    async with _store_and_broker(stack) as (db, broker):
        await _asleep_and_ten_seconds_overdue(stack, db)
        await broker.connect()
        sweeper = _sweeper(db, broker)
        swept_at = now_ms()
        assert await sweeper.sweep_once() == 1
        assert await broker.queue_depth("napper") == 1
        # Ten seconds late means queued behind load far more often than lost: the next
        # re-issue waits as long again, not one grace period.
        assert await _timer_due(db) >= swept_at + 10_000
        assert await sweeper.sweep_once() == 0
        assert await broker.queue_depth("napper") == 1


async def test_a_reissue_the_broker_refuses_is_retried_at_the_next_sweep(stack: Stack) -> None:
    async with _store_and_broker(stack) as (db, broker):  # never connected: refuses
        await _asleep_and_ten_seconds_overdue(stack, db)
        due = await _timer_due(db)
        with pytest.raises(RuntimeError, match="not connected"):
            await _sweeper(db, broker).sweep_once()
        assert await _timer_due(db) == due  # not pushed back: the wake-up was not sent
        await broker.connect()
        assert await _sweeper(db, broker).sweep_once() == 1
        assert await broker.queue_depth("napper") == 1


@contextlib.contextmanager
def _publishes_refused(broker: Broker) -> Iterator[None]:
    async def refuse(messages: Any) -> None:
        raise PublishError("refused by the test")

    with mock.patch.object(broker, "publish", refuse):
        yield


async def test_a_broker_error_counting_a_queue_costs_the_sweep_no_other_wake_up(
    stack: Stack,
) -> None:
    async with _store_and_broker(stack) as (db, broker):
        await _asleep_and_ten_seconds_overdue(stack, db)
        await broker.connect()

        async def fail(workflow: str) -> int:
            raise RuntimeError("queue.declare: NOT_FOUND")

        with mock.patch.object(broker, "queue_depth", fail):
            assert await _sweeper(db, broker).sweep_once() == 1
        assert await broker.queue_depth("napper") == 1


async def _drop_queued(broker: Broker, workflow: str, count: int) -> None:
    """Take ``count`` messages off the workflow's queue and ack them unread: lost, as a broker
    restart loses the transient create messages it held."""
    dropped: list[Delivery] = []
    all_dropped = asyncio.Event()

    async def drop(delivery: Delivery) -> None:
        dropped.append(delivery)
        await delivery.ack()
        if len(dropped) == count:
            all_dropped.set()

    consumer = await broker.consume(workflow, drop, prefetch=count)
    try:
        await asyncio.wait_for(all_dropped.wait(), timeout=10)
    finally:
        await consumer.cancel()


async def test_an_instance_whose_create_message_was_lost_is_started_by_the_sweeper(
    stack: Stack,
) -> None:
    async with _store_and_broker(stack) as (db, broker):
        await broker.connect()
        async with stack.client() as client:
            await client.workflow("quick").create(id="lost-1")
        quick = _sweeper(db, broker, served="quick", lost_create_grace_ms=0)
        # Its create is still queued (a backlog being worked through): not re-poked.
        assert await quick.sweep_once() == 0
        assert await broker.queue_depth("quick") == 1
        await _drop_queued(broker, "quick", 1)
        # Lost, but younger than the grace: a worker may hold the create unsettled.
        assert await _sweeper(db, broker, served="quick").sweep_once() == 0
        # Found once: a worker may still hold it unsettled; found again: lost.
        assert await quick.sweep_once() == 0
        with _publishes_refused(broker), pytest.raises(PublishError):
            await quick.sweep_once()
        assert await quick.sweep_once() == 1  # refused, so sent again
        assert await broker.queue_depth("quick") == 1
        # A worker holds that wake-up unsettled, so the queue looks empty again: it is not
        # re-issued while it may still be in flight.
        held = asyncio.Event()

        async def hold(delivery: Delivery) -> None:
            held.set()

        holder = await broker.consume("quick", hold, prefetch=1)
        await asyncio.wait_for(held.wait(), timeout=10)
        assert await broker.queue_depth("quick") == 0
        assert await quick.sweep_once() == 0
        await holder.cancel()  # back to the queue, unsettled
        # A worker whose own sweeper never runs again: only that wake-up can start it.
        async with stack.running([Quick], sweep_interval_s=3600) as client:
            inst = await client.workflow("quick").get("lost-1")
            assert (await inst.wait_for_status("complete", timeout=20)).output == "done"


async def test_warren_creates_are_sent_transient_and_other_messages_persistent(
    real_stack: Stack,
) -> None:
    import aio_pika

    broker = broker_from_url(real_stack.broker_url, real_stack.namespace)
    try:
        await broker.connect()
        async with real_stack.client() as client:
            await client.workflow("quick").create(id="reminder")
        await broker.publish([OutgoingMessage("create", "quick", b'{"id": "foreign"}')])
        connection = await aio_pika.connect(real_stack.broker_url)
        async with connection:
            channel = await connection.channel()
            name = Topology(real_stack.namespace).workflow_queue("quick")
            queue = await channel.get_queue(name, ensure=False)
            modes: dict[str, int | None] = {}
            for _ in range(2):
                message = await queue.get(no_ack=True, timeout=5)
                modes[orjson.loads(message.body)["id"]] = message.delivery_mode
        assert modes == {"reminder": aio_pika.DeliveryMode.NOT_PERSISTENT,
                         "foreign": aio_pika.DeliveryMode.PERSISTENT}
    finally:
        await broker.close()
