"""The Broker contract, run against MemoryBroker and RabbitBroker alike.

To show that a message did *not* reach a queue without sleeping, tests publish the unwanted
message first and a wanted one after it (each publish is confirmed before the next): queues are
FIFO, so if the unwanted one had been routed it would arrive first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest

from broker import (
    ORIGIN_EXCHANGE_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    REASON_HEADER,
    Broker,
    Consumer,
    Delivery,
    OutgoingMessage,
    PublishError,
    broker_from_url,
    rabbitmq,
)
from broker._topology import DEFAULT_DELAY_BITS, REMAINING_DELAY_HEADER
from broker.memory import MemoryBroker
from broker.rabbitmq import RabbitBroker

from .conftest import BrokerFactory

pytestmark = pytest.mark.timeout(60)


def new_workflow() -> str:
    return f"wf{uuid.uuid4().hex[:8]}"


def create(workflow: str, body: bytes = b"{}", **kwargs: Any) -> OutgoingMessage:
    return OutgoingMessage("create", workflow, body, **kwargs)


async def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds, polling; fail after ``within_s`` seconds."""
    async with asyncio.timeout(within_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


class Inbox:
    """A consumer handler that records deliveries (with arrival time) and settles as told."""

    def __init__(self, settle: str | None = "ack") -> None:
        self.settle = settle
        self.deliveries: list[Delivery] = []
        self.arrivals: list[float] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.arrivals.append(time.monotonic())
        self.deliveries.append(delivery)
        if self.settle == "ack":
            await delivery.ack()

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]

    async def wait(self, count: int, within_s: float = 10.0) -> None:
        await eventually(lambda: len(self.deliveries) >= count, within_s)


async def held_unsettled(broker: Broker, count: int, prefetch: int
                         ) -> tuple[str, Inbox, Consumer]:
    """A new workflow's queue with ``count`` creates (bodies ``b"0"``, ``b"1"``, ...), all
    delivered to a consumer that has settled none of them yet."""
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf, str(i).encode()) for i in range(count)])
    held = Inbox(settle=None)
    consumer = await broker.consume(wf, held, prefetch=prefetch)
    await held.wait(count)
    return wf, held, consumer


# -- publish, consume, settle ------------------------------------------------------------------


async def test_publish_consume_ack(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.declare_workflow(wf)  # idempotent
    await broker.publish(
        [create(wf, b'{"params": 1}', message_id="m1",
                headers={"x-trace": "t1", "n": 3, "ratio": 0.1})]
    )
    inbox = Inbox()
    consumer = await broker.consume(wf, inbox, prefetch=10)
    await inbox.wait(1)
    delivery = inbox.deliveries[0]
    assert delivery.body == b'{"params": 1}'
    assert (delivery.exchange, delivery.routing_key) == ("create", wf)
    assert delivery.message_id == "m1"
    assert delivery.headers["x-trace"] == "t1" and delivery.headers["n"] == 3
    assert delivery.headers["ratio"] == 0.1  # a double on the wire, not a 32-bit float
    assert not delivery.redelivered
    await consumer.cancel()
    await consumer.cancel()  # idempotent
    assert await broker.queue_depth(wf) == 0


async def test_batch_is_delivered_in_order(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf, str(i).encode()) for i in range(50)])
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=1)
    await inbox.wait(50)
    assert inbox.bodies == [str(i).encode() for i in range(50)]


async def test_nack_requeue_redelivers(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    seen: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            await delivery.nack(requeue=True)
        else:
            await delivery.ack()

    await broker.publish([create(wf, b"x", message_id="only")])
    await broker.consume(wf, handler, prefetch=5)
    await eventually(lambda: len(seen) >= 2)
    assert [d.redelivered for d in seen] == [False, True]
    assert {d.message_id for d in seen} == {"only"}


async def test_handler_exception_requeues(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    seen: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            raise RuntimeError("boom")
        await delivery.ack()

    await broker.publish([create(wf, b"x")])
    await broker.consume(wf, handler, prefetch=5)
    await eventually(lambda: len(seen) >= 2)
    assert seen[1].redelivered and seen[1].body == b"x"


async def test_settling_twice_raises(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf)])
    inbox = Inbox(settle=None)
    await broker.consume(wf, inbox, prefetch=5)
    await inbox.wait(1)
    await inbox.deliveries[0].ack()
    with pytest.raises(RuntimeError):
        await inbox.deliveries[0].ack()


async def test_unacked_redelivered_after_cancel(broker: Broker) -> None:
    wf, holder, consumer = await held_unsettled(broker, 3, prefetch=10)
    await consumer.cancel()
    await holder.deliveries[0].ack()  # too late: a no-op, the message went back
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    await inbox.wait(3)
    assert sorted(inbox.bodies) == [b"0", b"1", b"2"]
    assert all(d.redelivered for d in inbox.deliveries)


async def test_unacked_redelivered_after_connection_closed(make_broker: BrokerFactory) -> None:
    first, second = await make_broker(), await make_broker()
    wf = new_workflow()
    await first.declare_workflow(wf)
    await first.publish([create(wf, b"a"), create(wf, b"b")])
    holder = Inbox(settle=None)
    await first.consume(wf, holder, prefetch=10)
    await holder.wait(2)
    await first.close()
    await first.close()  # idempotent
    inbox = Inbox()
    await second.consume(wf, inbox, prefetch=10)
    await inbox.wait(2)
    assert sorted(inbox.bodies) == [b"a", b"b"]
    assert all(d.redelivered for d in inbox.deliveries)


async def test_prefetch_bounds_unsettled(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf, str(i).encode()) for i in range(10)])
    inbox = Inbox(settle=None)
    await broker.consume(wf, inbox, prefetch=3)
    await inbox.wait(3)
    # The other 7 are still ready in the queue, not buffered in the client.
    assert await broker.queue_depth(wf) == 7
    most_unsettled = 0
    for settled in range(10):
        await inbox.wait(settled + 1)
        most_unsettled = max(most_unsettled, len(inbox.deliveries) - settled)
        await inbox.deliveries[settled].ack()
    assert most_unsettled == 3
    assert inbox.bodies == [str(i).encode() for i in range(10)]


# -- routing ----------------------------------------------------------------------------------


async def test_create_routes_by_workflow_name(broker: Broker) -> None:
    wanted, other = new_workflow(), new_workflow()
    for wf in (wanted, other):
        await broker.declare_workflow(wf)
    await broker.publish([create(other, b"other")])
    await broker.publish([create(wanted, b"wanted")])
    inbox = Inbox()
    await broker.consume(wanted, inbox, prefetch=10)
    await inbox.wait(1)
    assert inbox.bodies == [b"wanted"]
    assert await broker.queue_depth(other) == 1


async def test_events_route_to_their_workflow_only(broker: Broker) -> None:
    wanted = new_workflow()
    other = wanted + "x"  # shares a prefix: "<wanted>.#" must still not match it
    for wf in (wanted, other):
        await broker.declare_workflow(wf)
    await broker.publish([OutgoingMessage("events", f"{other}.i1.approval", b"other")])
    await broker.publish(
        [OutgoingMessage("events", f"{wanted}.i1.approval", b"wanted", message_id="e1")]
    )
    inbox = Inbox()
    await broker.consume(wanted, inbox, prefetch=10)
    await inbox.wait(1)
    assert inbox.bodies == [b"wanted"]
    delivery = inbox.deliveries[0]
    assert (delivery.exchange, delivery.routing_key) == ("events", f"{wanted}.i1.approval")
    assert delivery.message_id == "e1"


async def test_internal_routes_by_workflow_name(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([OutgoingMessage("internal", wf, b"wake")])
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    await inbox.wait(1)
    assert (inbox.deliveries[0].exchange, inbox.deliveries[0].routing_key) == ("internal", wf)


async def test_unroutable_internal_publish_raises(broker: Broker) -> None:
    with pytest.raises(PublishError):
        await broker.publish([OutgoingMessage("internal", "nosuchworkflow", b"{}")])


async def test_unroutable_contract_messages_are_kept_for_the_engine(broker: Broker) -> None:
    # Foreign publishers get no returns: create/events for no workflow must not vanish.
    await broker.publish([
        OutgoingMessage("create", "nosuchworkflow", b'{"n": 1}'),
        OutgoingMessage("events", "nosuchworkflow.i1.approval", b'{"n": 2}'),
    ])
    inbox = Inbox()
    await broker.consume_unroutable(inbox, prefetch=10)
    await inbox.wait(2)
    got = sorted((d.exchange, d.routing_key, d.body) for d in inbox.deliveries)
    assert got == [("create", "nosuchworkflow", b'{"n": 1}'),
                   ("events", "nosuchworkflow.i1.approval", b'{"n": 2}')]


async def test_batch_with_unroutable_message_raises_but_delivers_the_rest(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    with pytest.raises(PublishError):
        await broker.publish([create(wf, b"ok"), OutgoingMessage("internal", "nosuchworkflow",
                                                                 b"lost")])
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    await inbox.wait(1)
    assert inbox.bodies == [b"ok"]


async def test_confirmed_messages_of_concurrent_publishes_are_each_confirmed(
    broker: Broker,
) -> None:
    # On RabbitMQ the confirmed messages of one publish go out as one socket write, each with
    # its own delivery tag: concurrent publishes on the channel must not mix them up, a
    # returned (unroutable) message must fail alone, and the channel must go on confirming.
    wf = new_workflow()
    await broker.declare_workflow(wf)
    big = b'"' + b"y" * 300_000 + b'"'
    batch = [create(wf, big if i == 7 else str(i).encode()) for i in range(30)]
    await asyncio.gather(broker.publish(batch[:15]), broker.publish(batch[15:]))
    with pytest.raises(PublishError, match="nosuchworkflow"):
        await broker.publish([create(wf, b"a"),
                              OutgoingMessage("internal", "nosuchworkflow", b"lost"),
                              create(wf, b"b")])
    await broker.publish([create(wf, b"after")])
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=100)
    await inbox.wait(33)
    got = inbox.bodies
    assert sorted(got) == sorted([m.body for m in batch] + [b"a", b"b", b"after"])
    for part in (batch[:15], batch[15:]):  # each publish in its own order
        bodies = [m.body for m in part]
        assert [b for b in got if b in bodies] == bodies


async def test_a_returned_message_is_told_apart_from_one_sharing_its_message_id(
    broker: Broker,
) -> None:
    # basic.return is matched to its publish by message id (aiormq): of two messages
    # published together with one id, the one that came back is the one that fails.
    wf = new_workflow()
    await broker.declare_workflow(wf)
    with pytest.raises(PublishError, match=r"(first|unroutable): internal:nosuchworkflow"):
        await broker.publish([OutgoingMessage("internal", "nosuchworkflow", b"lost",
                                              message_id="shared"),
                              create(wf, b"kept", message_id="shared")])
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    await inbox.wait(1)
    assert inbox.bodies == [b"kept"]


async def test_lifecycle_without_subscribers_is_not_an_error(broker: Broker) -> None:
    await broker.publish([OutgoingMessage("lifecycle", "wf.i1.instance.complete", b"{}")])


@pytest.mark.parametrize(
    "message",
    [
        OutgoingMessage("create", "wf", b"{}", delay_ms=10),
        OutgoingMessage("events", "wf.i.e", b"{}", delay_ms=10),
        OutgoingMessage("internal", "wf", b"{}", delay_ms=-1),
    ],
    ids=["create", "events", "negative"],
)
async def test_invalid_delay_is_a_value_error(broker: Broker, message: OutgoingMessage) -> None:
    with pytest.raises(ValueError):
        await broker.publish([message])


async def test_namespaces_are_isolated(make_broker: BrokerFactory) -> None:
    one = await make_broker(f"ns{uuid.uuid4().hex[:8]}")
    two = await make_broker(f"ns{uuid.uuid4().hex[:8]}")
    wf = "shared"
    for broker in (one, two):
        await broker.declare_workflow(wf)
    await one.publish([create(wf, b"one")])
    await two.publish([create(wf, b"two")])
    inbox_two, inbox_one = Inbox(), Inbox()
    await two.consume(wf, inbox_two, prefetch=10)
    await one.consume(wf, inbox_one, prefetch=10)
    await inbox_two.wait(1)
    await inbox_one.wait(1)
    assert inbox_two.bodies == [b"two"]
    assert inbox_one.bodies == [b"one"]


# -- dead letters -----------------------------------------------------------------------------


async def test_dead_letter_keeps_message_and_reason(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)

    async def handler(delivery: Delivery) -> None:
        if delivery.body == b"bad":
            await delivery.dead_letter("body is not JSON")
        else:
            await delivery.ack()

    await broker.publish(
        [create(wf, b"bad", message_id="b1", headers={"x-trace": "t"}), create(wf, b"1")]
    )
    await broker.publish([create(wf, b"2")])
    seen: list[bytes] = []

    async def recording(delivery: Delivery) -> None:
        seen.append(delivery.body)
        await handler(delivery)

    # prefetch=1: the messages behind the bad one get through only if it left the queue.
    consumer = await broker.consume(wf, recording, prefetch=1)
    await eventually(lambda: len(seen) >= 3)
    assert seen == [b"bad", b"1", b"2"]
    dead = await broker.get_dead(timeout_s=10)  # type: ignore[attr-defined]
    assert dead is not None
    assert dead.body == b"bad" and dead.message_id == "b1"
    assert dead.headers[REASON_HEADER] == "body is not JSON"
    assert dead.headers[ORIGIN_EXCHANGE_HEADER] == "create"
    assert dead.headers[ORIGIN_ROUTING_KEY_HEADER] == wf
    assert dead.headers["x-trace"] == "t"
    await consumer.cancel()
    assert await broker.queue_depth(wf) == 0
    assert await broker.get_dead(timeout_s=0.1) is None  # type: ignore[attr-defined]


async def test_nack_without_requeue_dead_letters(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf, b"rejected")])

    async def handler(delivery: Delivery) -> None:
        await delivery.nack(requeue=False)

    await broker.consume(wf, handler, prefetch=1)
    dead = await broker.get_dead(timeout_s=10)  # type: ignore[attr-defined]
    assert dead is not None and dead.body == b"rejected"
    assert dead.exchange == "dead"
    assert "x-death" not in dead.headers


async def test_settlements_issued_together_each_take_effect(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On RabbitMQ the acks and nacks issued in one pass of the event loop (a turn acking its
    # batch) go out as one socket write: each must still settle its own delivery.
    writes = 0
    if isinstance(broker, RabbitBroker):
        write_pending = rabbitmq._Settlements._write_pending

        async def counted(self: Any, drained: asyncio.Future[Any]) -> None:
            nonlocal writes
            writes += 1
            await write_pending(self, drained)

        monkeypatch.setattr(rabbitmq._Settlements, "_write_pending", counted)
    wf, held, consumer = await held_unsettled(broker, 30, prefetch=100)
    await asyncio.gather(*(
        d.ack() if int(d.body) % 3 == 0 else d.nack(requeue=int(d.body) % 3 == 1)
        for d in held.deliveries))
    if isinstance(broker, RabbitBroker):
        assert writes == 1
    await consumer.cancel()  # what was not settled would come back now
    again = Inbox()
    await broker.consume(wf, again, prefetch=100)
    await again.wait(10)
    dead = [await broker.get_dead(timeout_s=10) for _ in range(10)]  # type: ignore[attr-defined]
    assert sorted(int(b) for b in again.bodies) == [i for i in range(30) if i % 3 == 1]
    assert sorted(int(d.body) for d in dead) == [i for i in range(30) if i % 3 == 2]
    await eventually(lambda: len(again.deliveries) == 10)
    assert await broker.queue_depth(wf) == 0
    assert await broker.get_dead(timeout_s=0.1) is None  # type: ignore[attr-defined]


# -- delays -----------------------------------------------------------------------------------


async def test_delayed_messages_never_arrive_early(make_broker: BrokerFactory) -> None:
    broker = await make_broker(max_delay_bits=DEFAULT_DELAY_BITS)  # the real topology
    wf = new_workflow()
    await broker.declare_workflow(wf)
    rng = random.Random(7)
    delays = {f"m{i}": rng.randint(0, 3000) for i in range(30)}
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=50)
    published_at = time.monotonic()
    await broker.publish(
        [
            OutgoingMessage("internal", wf, b"{}", delay_ms=d, message_id=m, headers={"k": m})
            for m, d in delays.items()
        ]
    )
    await inbox.wait(len(delays), within_s=20)
    lateness_ms = []
    for delivery, arrived in zip(inbox.deliveries, inbox.arrivals, strict=True):
        assert delivery.message_id is not None
        lateness_ms.append((arrived - published_at) * 1000 - delays[delivery.message_id])
        assert (delivery.exchange, delivery.routing_key) == ("internal", wf)
        assert delivery.headers == {"k": delivery.message_id}  # no x-death or internals
    early = [late for late in lateness_ms if late < -1e-3]
    print(
        f"\n[{type(broker).__name__}] lateness ms: p50={statistics.median(lateness_ms):.1f} "
        f"max={max(lateness_ms):.1f} early={len(early)}"
    )
    assert early == []


async def test_delays_arrive_in_due_order(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    await broker.publish(
        [OutgoingMessage("internal", wf, str(d).encode(), delay_ms=d) for d in (1200, 400, 0, 800)]
    )
    await inbox.wait(4)
    assert inbox.bodies == [b"0", b"400", b"800", b"1200"]


async def test_delay_longer_than_topology_maximum_is_chained(make_broker: BrokerFactory) -> None:
    # 4 levels: at most 15 ms per pass, so 120 ms takes several passes.
    broker = await make_broker(f"short{uuid.uuid4().hex[:8]}", max_delay_bits=4)
    wf = new_workflow()
    await broker.declare_workflow(wf)
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    published_at = time.monotonic()
    await broker.publish([OutgoingMessage("internal", wf, b"late", delay_ms=120)])
    await inbox.wait(1)
    assert inbox.arrivals[0] - published_at >= 0.120
    assert inbox.deliveries[0].headers == {}


# -- subscriptions ----------------------------------------------------------------------------


async def test_subscribe_receives_matching_lifecycle_messages(broker: Broker) -> None:
    wf = new_workflow()
    subscription: Any = broker.subscribe("lifecycle", f"{wf}.*.instance.#")
    async with subscription:
        await broker.publish(
            [
                OutgoingMessage("lifecycle", "other.i1.instance.complete", b"other"),
                OutgoingMessage("lifecycle", f"{wf}.i1.step.failed", b"step"),
                OutgoingMessage("lifecycle", f"{wf}.i1.progress", b"progress"),
            ]
        )
        await broker.publish([OutgoingMessage("lifecycle", f"{wf}.i1.instance.complete", b"ok")])
        delivery = await asyncio.wait_for(anext(subscription), 10)
        assert delivery.body == b"ok"
        assert (delivery.exchange, delivery.routing_key) == (
            "lifecycle",
            f"{wf}.i1.instance.complete",
        )
        await delivery.ack()  # allowed, and a no-op


async def test_a_subscription_closed_while_it_binds_ends_and_holds_nothing(
    broker: Broker,
) -> None:
    subscription = broker.subscribe("lifecycle", f"{new_workflow()}.#")
    starting = asyncio.create_task(subscription.start())
    await asyncio.sleep(0)  # binding is under way (on RabbitMQ: its channel is opening)
    await subscription.aclose()
    await asyncio.wait_for(starting, 10)
    assert await asyncio.wait_for(anext(subscription, None), 5) is None  # the iteration ended
    # Neither a channel with a bound queue (RabbitMQ) nor the broker's record of it is left.
    assert getattr(subscription, "_channel", None) is None
    assert subscription not in broker._subscriptions  # type: ignore[attr-defined]


async def test_notifications_published_with_other_messages_arrive_whole_and_in_order(
    broker: Broker,
) -> None:
    # Notifications of one publish go out together (on RabbitMQ: one socket write); a body
    # larger than an AMQP frame (128 KiB) is split into several body frames.
    wf = new_workflow()
    await broker.declare_workflow(wf)
    big = b'"' + b"x" * 300_000 + b'"'
    notes = [OutgoingMessage("lifecycle", f"{wf}.i{i}.progress",
                             big if i == 3 else str(i).encode(), headers={"n": i})
             for i in range(40)]
    subscription: Any = broker.subscribe("lifecycle", f"{wf}.#")
    async with subscription:
        await broker.publish([notes[0], create(wf, b"c0"), *notes[1:20], create(wf, b"c1"),
                              *notes[20:]])
        got = [await asyncio.wait_for(anext(subscription), 10) for _ in notes]
    assert [(d.routing_key, d.body, d.headers["n"]) for d in got] == [
        (n.routing_key, n.body, n.headers["n"]) for n in notes]
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=10)
    await inbox.wait(2)
    assert inbox.bodies == [b"c0", b"c1"]


async def test_subscribe_star_matches_exactly_one_word(broker: Broker) -> None:
    wf = new_workflow()
    subscription: Any = broker.subscribe("lifecycle", f"{wf}.*.progress")
    async with subscription:
        await broker.publish(
            [
                OutgoingMessage("lifecycle", f"{wf}.progress", b"none"),
                OutgoingMessage("lifecycle", f"{wf}.i1.x.progress", b"two"),
            ]
        )
        await broker.publish([OutgoingMessage("lifecycle", f"{wf}.i1.progress", b"one")])
        delivery = await asyncio.wait_for(anext(subscription), 10)
        assert delivery.body == b"one"


async def test_subscription_ends_on_close(broker: Broker) -> None:
    subscription: Any = broker.subscribe("lifecycle", "#")
    await subscription.start()
    await broker.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(subscription), 10)


# -- construction (not parametrized) ----------------------------------------------------------


def test_factory_picks_the_implementation() -> None:
    assert isinstance(broker_from_url(None), MemoryBroker)
    assert isinstance(broker_from_url("memory://"), MemoryBroker)
    assert isinstance(broker_from_url("amqp://guest:guest@localhost/"), RabbitBroker)
    assert isinstance(broker_from_url("amqps://u:p@example.com/vh", "ns"), RabbitBroker)
    with pytest.raises(ValueError, match="redis"):
        broker_from_url("redis://localhost")


async def test_shared_memory_brokers_see_the_same_queues() -> None:
    name = f"shared-{uuid.uuid4().hex}"
    client, worker = broker_from_url(f"memory://{name}"), broker_from_url(f"memory://{name}")
    async with client, worker:
        await worker.declare_workflow("wf")
        await client.publish([create("wf", b"hello")])
        inbox = Inbox()
        await worker.consume("wf", inbox, prefetch=1)
        await inbox.wait(1)
        assert inbox.bodies == [b"hello"]
    other = broker_from_url(f"memory://{name}-other")
    async with other:
        with pytest.raises(PublishError):
            await other.publish([OutgoingMessage("internal", "wf", b"{}")])


async def test_rabbit_connect_gives_up_after_bounded_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[aio_pika.RobustConnection] = []
    init = aio_pika.RobustConnection.__init__

    def recorded(self: aio_pika.RobustConnection, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        attempts.append(self)

    monkeypatch.setattr(aio_pika.RobustConnection, "__init__", recorded)
    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:1/", connect_attempts=2)
    started = time.monotonic()
    with pytest.raises((ConnectionError, OSError)):
        await broker.connect()
    assert time.monotonic() - started < 30
    # Each failed attempt's connection is closed, not left to a finalizer that schedules
    # a close on whatever loop is left (a "never awaited" warning in a later test).
    assert len(attempts) == 2 and all(c.is_closed for c in attempts)
    await broker.close()  # closing a broker that never connected is fine


async def test_priority_messages_are_delivered_before_earlier_normal_ones(broker: Broker) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf, b"new-1"), create(wf, b"new-2")])
    await broker.publish([OutgoingMessage("internal", wf, b"wake", priority=1)])
    inbox = Inbox()
    await broker.consume(wf, inbox, prefetch=1)
    await inbox.wait(3)
    assert inbox.bodies == [b"wake", b"new-1", b"new-2"]


class _StallingProxy:
    """A TCP proxy to RabbitMQ that can stop passing the server's bytes on (a broker that
    takes publishes but no longer answers), and start again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                      ) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        for pipe in (self._pipe(client_r, server_w, None),
                     self._pipe(server_r, client_w, self._flowing)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    gate: asyncio.Event | None) -> None:
        try:
            while data := await reader.read(65536):
                if gate is not None:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def _through_proxy(rabbit_url: str) -> AsyncIterator[tuple[_StallingProxy, RabbitBroker]]:
    """A broker (publish timeout 0.5 s) reaching RabbitMQ through a proxy the test controls."""
    parts = urlsplit(rabbit_url)
    proxy = _StallingProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    port = await proxy.start()
    broker = RabbitBroker(urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{port}")),
                          f"t{uuid.uuid4().hex[:10]}", max_delay_bits=13, publish_timeout_s=0.5)
    await broker.connect()
    try:
        yield proxy, broker
    finally:
        proxy.flow()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.close(), 5)
        await proxy.close()


@pytest.mark.rabbitmq
async def test_rabbit_publish_fails_in_time_when_confirms_stop_coming(rabbit_url: str) -> None:
    async with _through_proxy(rabbit_url) as (proxy, broker):
        wf = new_workflow()
        await broker.declare_workflow(wf)
        await broker.publish([create(wf, b"through the proxy")])
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(PublishError, match=r"not all confirmed within 0\.5 s"):
            # The unroutable one comes back (basic.return) only after the publish gave up.
            await broker.publish([create(wf, b"a"),
                                  OutgoingMessage("internal", "nosuchworkflow", b"late"),
                                  create(wf, b"b")])
        assert time.monotonic() - started < 5
        proxy.flow()
        # The late return must not break the channel: the next publish is confirmed.
        await broker.publish([create(wf, b"and through again")])


@pytest.mark.rabbitmq
async def test_rabbit_rolled_back_publish_leaves_an_earlier_ones_return_matching(
    rabbit_url: str,
) -> None:
    # A publish that fails while encoding (a routing key over 255 bytes) is rolled back
    # before anything is sent. An earlier publish of the same message id that still awaits
    # its confirm (the proxy holds the broker's answers) must still learn that it came back.
    parts = urlsplit(rabbit_url)
    proxy = _StallingProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    port = await proxy.start()
    broker = RabbitBroker(urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{port}")),
                          f"t{uuid.uuid4().hex[:10]}", max_delay_bits=13)
    await broker.connect()
    try:
        wf = new_workflow()
        await broker.declare_workflow(wf)
        raw = await broker._require_channel().get_underlay_channel()
        proxy.stall()
        earlier = asyncio.ensure_future(broker.publish(
            [OutgoingMessage("internal", "nosuchworkflow", b"lost", message_id="shared")]))
        await eventually(lambda: "shared" in raw.message_id_delivery_tag, 5)
        with pytest.raises(PublishError, match="255 bytes"):
            await broker.publish([create(wf, b"rolled back", message_id="shared"),
                                  OutgoingMessage("events", "k" * 300, b"too long")])
        proxy.flow()
        with pytest.raises(PublishError, match="nosuchworkflow"):
            await asyncio.wait_for(earlier, 10)
    finally:
        proxy.flow()
        await broker.close()
        await proxy.close()


@pytest.mark.rabbitmq
async def test_rabbit_short_strings_that_are_not_utf8_dead_letter_their_message_alone(
    rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ passes on any bytes as a routing key or message id. Read as strict UTF-8,
    such a delivery broke the consumer's connection, again at every reconnect, and stopped
    every message behind it. It is dead-lettered now, and the rest goes on."""
    import pamqp.encode

    broker = RabbitBroker(rabbit_url, f"t{uuid.uuid4().hex[:10]}", max_delay_bits=13)
    await broker.connect()
    try:
        wf = new_workflow()
        await broker.declare_workflow(wf)
        table = pamqp.encode.METHODS["table"]
        with monkeypatch.context() as patched:  # a foreign publisher sending raw bytes
            patched.setattr(pamqp.encode, "_string", lambda fmt, value: fmt.pack(
                len(raw := value.encode("utf-8", "surrogateescape"))) + raw)
            patched.setitem(pamqp.encode.METHODS, "table", lambda value: table(
                {k.replace("\udcff", "Z"): v for k, v in value.items()}
            ).replace(b"\x02hZ", b"\x02h\xff"))
            async with await aio_pika.connect(rabbit_url) as connection:
                channel = await connection.channel()
                events = await channel.get_exchange(broker.topology.exchange("events"))
                creates = await channel.get_exchange(broker.topology.exchange("create"))
                await events.publish(aio_pika.Message(b"{}"), f"{wf}.i\udcff.go")
                # 200 invalid bytes: 600 once each is shown as U+FFFD, over AMQP's 255.
                await creates.publish(aio_pika.Message(b"{}", message_id="\udcff" * 200), wf)
                await creates.publish(aio_pika.Message(b"{}", headers={"h\udcff": "v"}), wf)
        # Only the engine's own delayed messages may carry what remains of a delay.
        await broker.publish([create(wf, b"after", headers={REMAINING_DELAY_HEADER: 60_000})])
        seen: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.body)
            await delivery.ack()

        consumer = await broker.consume(wf, handler, prefetch=1)
        await eventually(lambda: seen == [b"after"])
        dead = [await broker.get_dead(timeout_s=10) for _ in range(3)]
        await consumer.cancel()
        assert all(d is not None and "not UTF-8" in str(d.headers[REASON_HEADER])
                   for d in dead)
        assert {d.headers[ORIGIN_ROUTING_KEY_HEADER] for d in dead if d} == {
            f"{wf}.i\ufffd.go", wf}
        assert "\ufffd" * 85 in {d.message_id for d in dead if d}  # cut to 255 bytes
        assert any("h\ufffd" in d.headers for d in dead if d)
    finally:
        await broker.close()


@pytest.mark.rabbitmq
async def test_rabbit_publish_fails_in_time_while_the_connection_is_down(rabbit_url: str) -> None:
    """A publish waited for the channels before its deadline started: while the connection
    was being re-established (the broker gone), it waited for as long as that took."""
    async with _through_proxy(rabbit_url) as (proxy, broker):
        wf = new_workflow()
        await broker.declare_workflow(wf)
        await broker.publish([create(wf, b"before")])
        await proxy.close()  # every connection dropped, none accepted: the broker is gone
        # The first publish may meet the closing connection; the later ones meet the
        # channels being re-established, which they waited for without a deadline.
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(PublishError):
                await broker.publish([create(wf, b"while it is gone")])
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.3)


@pytest.mark.rabbitmq
async def test_rabbit_a_dead_lettered_copy_keeps_how_to_read_and_answer_it(
    rabbit_url: str,
) -> None:
    from broker._base import ORIGINAL_PROPERTY_PREFIX as kept

    broker = RabbitBroker(rabbit_url, f"t{uuid.uuid4().hex[:10]}", max_delay_bits=13)
    await broker.connect()
    try:
        wf = new_workflow()
        await broker.declare_workflow(wf)
        async with await aio_pika.connect(rabbit_url) as connection:
            creates = await (await connection.channel()).get_exchange(
                broker.topology.exchange("create"))
            await creates.publish(aio_pika.Message(
                b"\x1f\x8b compressed", content_type="application/json",
                content_encoding="gzip", correlation_id="c-7", reply_to="answers",
                app_id="billing"), wf)

        async def refuse(delivery: Delivery) -> None:
            await delivery.dead_letter("body is not JSON")

        consumer = await broker.consume(wf, refuse, prefetch=1)
        dead = await broker.get_dead(timeout_s=10)  # type: ignore[attr-defined]
        await consumer.cancel()
        assert dead is not None and dead.body == b"\x1f\x8b compressed"
        assert {k: v for k, v in dead.headers.items() if k.startswith(kept)} == {
            f"{kept}content-type": "application/json", f"{kept}content-encoding": "gzip",
            f"{kept}correlation-id": "c-7", f"{kept}reply-to": "answers",
            f"{kept}app-id": "billing"}
    finally:
        await broker.close()


async def test_a_delivery_whose_consumer_was_cancelled_says_it_was_returned(
    broker: Broker,
) -> None:
    wf = new_workflow()
    await broker.declare_workflow(wf)
    await broker.publish([create(wf, b"held")])
    got: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        got.append(delivery)  # not settled: held, as an event waiting for its instance

    consumer = await broker.consume(wf, hold, prefetch=1)
    await eventually(lambda: len(got) == 1)
    assert not got[0].returned
    await consumer.cancel()
    assert got[0].returned  # the broker has it back; it must not raise either
