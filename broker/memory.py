"""The embedded in-process broker, Warren's default when no RabbitMQ URL is configured.

It keeps RabbitMQ's semantics where the engine can observe them: one FIFO queue per workflow,
manual settling with at most ``prefetch`` unsettled deliveries per consumer, redelivery (with
``redelivered=True``) of what a cancelled consumer left unsettled, delays that never end early,
a retained dead queue, topic routing, and :class:`PublishError` for unroutable messages. State
lives in the process only: a restart loses it (the SQL store and its sweeper are the truth).
Timers run on the event loop's clock (``loop.time()``), so a virtual-time loop drives them too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal, Protocol

import structlog

from broker._base import (
    ORIGIN_EXCHANGE_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    REASON_HEADER,
    Broker,
    Consumer,
    Delivery,
    DeliveryHandler,
    Exchange,
    HeaderValue,
    OutgoingMessage,
    PublishError,
    Subscription,
)
from broker._topology import (
    DEFAULT_NAMESPACE,
    EXCHANGE_TYPES,
    UNCHECKED_EXCHANGES,
    Topology,
    topic_matches,
    validate_message,
    validate_workflow_name,
)

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Message:
    exchange: Exchange
    routing_key: str
    body: bytes
    headers: dict[str, HeaderValue]
    message_id: str | None
    redelivered: bool = False
    priority: int = 0


class _Sink(Protocol):
    def put(self, message: _Message) -> None: ...


class _Queue:
    """A FIFO per priority (1 before 0, as RabbitMQ's x-max-priority=1) shared round-robin
    by its consumers."""

    def __init__(self) -> None:
        self.levels: tuple[deque[_Message], deque[_Message]] = (deque(), deque())
        self.consumers: list[_MemoryConsumer] = []
        self._turn = 0

    @property
    def ready(self) -> list[_Message]:
        return [*self.levels[1], *self.levels[0]]

    def put(self, message: _Message) -> None:
        self.levels[min(1, max(0, message.priority))].append(message)
        self.dispatch()

    def requeue(self, messages: Sequence[_Message]) -> None:
        # RabbitMQ puts requeued messages back near their old position, i.e. at the head.
        for message in reversed(messages):
            message.redelivered = True
            self.levels[min(1, max(0, message.priority))].appendleft(message)
        self.dispatch()

    def dispatch(self) -> None:
        while self.levels[0] or self.levels[1]:
            ready = [c for c in self.consumers if c.has_capacity]
            if not ready:
                return
            self._turn += 1
            level = self.levels[1] or self.levels[0]
            ready[self._turn % len(ready)].deliver(level.popleft())


class _State:
    """One namespace of one in-process "server": queues, bindings and pending delays."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.bindings: dict[Exchange, list[tuple[str, _Sink]]] = {e: [] for e in EXCHANGE_TYPES}
        self.dead = _Queue()
        self.bind("dead", "#", self.dead)
        # Like RabbitMQ's alternate exchange on create/events: kept for the engine to reject.
        self.unroutable = _Queue()
        self._timers: list[tuple[float, int, _Message]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def bind(self, exchange: Exchange, key: str, sink: _Sink) -> None:
        self.bindings[exchange].append((key, sink))

    def unbind(self, sink: _Sink) -> None:
        for exchange, bound in self.bindings.items():
            self.bindings[exchange] = [(k, s) for k, s in bound if s is not sink]

    def route(self, message: _Message) -> list[_Sink]:
        kind = EXCHANGE_TYPES[message.exchange]
        return [
            sink
            for key, sink in self.bindings[message.exchange]
            if kind == "fanout"
            or (kind == "direct" and key == message.routing_key)
            or (kind == "topic" and topic_matches(key, message.routing_key))
        ]

    def deliver(self, message: _Message) -> bool:
        sinks = self.route(message)
        for sink in sinks:
            sink.put(dataclasses.replace(message, headers=dict(message.headers)))
        return bool(sinks)

    def schedule(self, message: _Message, due: float, loop: asyncio.AbstractEventLoop) -> None:
        heapq.heappush(self._timers, (due, next(self._seq), message))
        self.arm(loop)

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """(Re)start the timer for the earliest delay on ``loop``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timers:
            self._timer_loop = loop
            self._timer = loop.call_at(self._timers[0][0], self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._timer_loop
        assert loop is not None
        # asyncio may run a timer up to one clock resolution early; never deliver early.
        now = loop.time()
        while self._timers and self._timers[0][0] <= now:
            _, _, message = heapq.heappop(self._timers)
            if not self.deliver(message):
                _log.warning("delayed message unroutable, dropped", key=message.routing_key)
        self.arm(loop)


class _MemoryDelivery(Delivery):
    def __init__(self, message: _Message, state: _State, consumer: _MemoryConsumer | None):
        self.body = message.body
        self.headers = MappingProxyType(dict(message.headers))
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.message_id = message.message_id
        self.redelivered = message.redelivered
        self._message = message
        self._state = state
        self._consumer = consumer
        self.status: Literal["pending", "settled", "returned"] = "pending"

    def _begin_settle(self) -> bool:
        """Mark settled; False when there is nothing to settle (auto-settled or returned)."""
        if self._consumer is None:
            return False
        if self.status == "settled":
            raise RuntimeError("delivery already settled")
        if self.status == "returned":
            _log.warning("settling a delivery its consumer already returned to the queue")
            return False
        self.status = "settled"
        self._consumer.release(self)
        return True

    async def ack(self) -> None:
        self._begin_settle()

    async def nack(self, *, requeue: bool = True) -> None:
        if self._begin_settle():
            if requeue:
                assert self._consumer is not None
                self._consumer.queue.requeue([self._message])
            else:
                self._state.deliver(dataclasses.replace(self._message, exchange="dead"))

    @property
    def returned(self) -> bool:
        return self.status == "returned"

    async def dead_letter(self, reason: str) -> None:
        if self._consumer is not None and self.status == "settled":
            raise RuntimeError("delivery already settled")
        headers = dict(self._message.headers)
        headers[REASON_HEADER] = reason
        headers[ORIGIN_EXCHANGE_HEADER] = self.exchange
        headers[ORIGIN_ROUTING_KEY_HEADER] = self.routing_key
        copy = dataclasses.replace(self._message, exchange="dead", headers=headers)
        if self.status == "pending":
            self._state.deliver(copy)
        await self.ack()


class _MemoryConsumer(Consumer):
    def __init__(
        self,
        broker: MemoryBroker,
        queue: _Queue,
        handler: DeliveryHandler,
        prefetch: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.queue = queue
        self._broker = broker
        self._handler = handler
        self._prefetch = prefetch
        self._loop = loop
        self._unsettled: dict[int, _MemoryDelivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.active = True

    @property
    def has_capacity(self) -> bool:
        return self.active and len(self._unsettled) < self._prefetch

    def deliver(self, message: _Message) -> None:
        delivery = _MemoryDelivery(message, self._broker._state, self)
        self._unsettled[id(delivery)] = delivery
        task = self._loop.create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, delivery: _MemoryDelivery) -> None:
        self._unsettled.pop(id(delivery), None)
        self.queue.dispatch()

    async def _run(self, delivery: _MemoryDelivery) -> None:
        if delivery.status != "pending":
            return  # cancelled before the handler started; the message is back in the queue
        try:
            await self._handler(delivery)
        except Exception:
            _log.exception("delivery handler failed; requeueing", key=delivery.routing_key)
            if delivery.status == "pending":
                await delivery.nack(requeue=True)

    async def cancel(self) -> None:
        if not self.active:
            return
        self.active = False
        self.queue.consumers.remove(self)
        returned = list(self._unsettled.values())
        self._unsettled.clear()
        for delivery in returned:
            delivery.status = "returned"
        self.queue.requeue([d._message for d in returned])
        self._broker._consumers.discard(self)


class MemorySubscription(Subscription):
    """Messages matching one binding, from creation on; ``aclose()`` (or ``async with``) ends it."""

    def __init__(self, state: _State, exchange: Exchange, binding_key: str,
                 on_close: Callable[[MemorySubscription], None]) -> None:
        self._state = state
        self._on_close = on_close
        self._messages: asyncio.Queue[_Message | None] = asyncio.Queue()
        self._closed = False
        state.bind(exchange, binding_key, self)

    def put(self, message: _Message) -> None:
        self._messages.put_nowait(message)

    async def __anext__(self) -> Delivery:
        if self._closed and self._messages.empty():
            raise StopAsyncIteration
        message = await self._messages.get()
        if message is None:
            raise StopAsyncIteration
        return _MemoryDelivery(message, self._state, None)

    async def start(self) -> None:
        """Nothing to wait for: the binding exists from creation (API parity with Rabbit)."""

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._state.unbind(self)
            self._on_close(self)
            self._messages.put_nowait(None)


class MemoryBroker(Broker):
    """In-process :class:`Broker`.

    ``MemoryBroker()`` has private state; :meth:`shared` returns handles onto process-wide state
    so that a worker and a client in one process see the same queues.

    Args:
        namespace: Namespace; different namespaces never see each other's messages.
    """

    _registry: ClassVar[dict[tuple[str, str], _State]] = {}

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, *, _state: _State | None = None):
        Topology(namespace)  # validates the name like RabbitBroker does
        self.namespace = namespace
        self._state = _state if _state is not None else _State()
        self._consumers: set[_MemoryConsumer] = set()
        self._subscriptions: set[MemorySubscription] = set()
        self._connected = False

    @classmethod
    def shared(cls, name: str = "default", namespace: str = DEFAULT_NAMESPACE) -> MemoryBroker:
        """A new handle onto the process-wide state registered under ``(name, namespace)``."""
        state = cls._registry.setdefault((name, namespace), _State())
        return cls(namespace, _state=state)

    @classmethod
    def reset_shared(cls) -> None:
        """Forget all shared state (for tests)."""
        cls._registry.clear()

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        self._subscriptions.clear()
        self._connected = False

    async def declare_workflow(self, workflow: str) -> None:
        self._check_connected()
        validate_workflow_name(workflow)
        if workflow not in self._state.queues:
            queue = self._state.queues[workflow] = _Queue()
            self._state.bind("create", workflow, queue)
            self._state.bind("events", f"{workflow}.#", queue)
            self._state.bind("internal", workflow, queue)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self._check_connected()
        for message in messages:
            validate_message(message)
        loop = asyncio.get_running_loop()
        unroutable: list[str] = []
        for out in messages:
            headers = dict(out.headers)
            msg = _Message(out.exchange, out.routing_key, out.body, headers, out.message_id,
                           priority=out.priority)
            if out.delay_ms:
                if not self._state.route(msg):
                    unroutable.append(f"{out.exchange}:{out.routing_key}")
                else:
                    self._state.schedule(msg, loop.time() + out.delay_ms / 1000, loop)
            elif self._state.deliver(msg) or out.exchange in UNCHECKED_EXCHANGES:
                pass
            elif out.exchange in ("create", "events"):
                self._state.unroutable.put(msg)
            else:
                unroutable.append(f"{out.exchange}:{out.routing_key}")
        if unroutable:
            raise PublishError(f"unroutable: {', '.join(unroutable)}")

    async def consume(self, workflow: str, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        await self.declare_workflow(workflow)
        loop = asyncio.get_running_loop()
        queue = self._state.queues[workflow]
        consumer = _MemoryConsumer(self, queue, handler, prefetch, loop)
        self._consumers.add(consumer)
        queue.consumers.append(consumer)
        self._state.arm(loop)  # pick up delays left by an earlier event loop
        queue.dispatch()
        return consumer

    async def consume_unroutable(self, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self._check_connected()
        queue = self._state.unroutable
        consumer = _MemoryConsumer(self, queue, handler, prefetch, asyncio.get_running_loop())
        self._consumers.add(consumer)
        queue.consumers.append(consumer)
        queue.dispatch()
        return consumer

    def subscribe(self, exchange: Exchange, binding_key: str) -> MemorySubscription:
        self._check_connected()
        if exchange not in EXCHANGE_TYPES:
            raise ValueError(f"unknown exchange {exchange!r}")
        subscription = MemorySubscription(self._state, exchange, binding_key,
                                          self._subscriptions.discard)
        self._subscriptions.add(subscription)
        return subscription

    async def queue_depth(self, workflow: str) -> int:
        """Messages waiting in the workflow's queue (not counting unsettled deliveries)."""
        await self.declare_workflow(workflow)
        return len(self._state.queues[workflow].ready)

    # -- helpers for tests and operations ----------------------------------------------------

    def dead_messages(self) -> list[Delivery]:
        """Snapshot of the dead queue, oldest first, without removing anything."""
        return [_MemoryDelivery(m, self._state, None) for m in self._state.dead.ready]

    async def get_dead(self, timeout_s: float = 5.0) -> Delivery | None:
        """Remove and return the oldest dead message, waiting up to ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._state.dead.ready:
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.01)
        return _MemoryDelivery(self._state.dead.levels[0].popleft(), self._state, None)

    async def delete_topology(self, workflows: Sequence[str] = ()) -> None:
        """Drop the given workflows' queues and all pending dead messages."""
        for workflow in workflows:
            queue = self._state.queues.pop(workflow, None)
            if queue is not None:
                self._state.unbind(queue)
        for level in self._state.dead.levels:
            level.clear()

    def _check_connected(self) -> None:
        if not self._connected:
            raise RuntimeError("broker is not connected: call connect() or use 'async with'")
