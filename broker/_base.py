"""The messaging interface the engine codes against, and the data it moves.

Two implementations exist: :class:`broker.rabbitmq.RabbitBroker` (aio-pika) and
:class:`broker.memory.MemoryBroker` (the embedded in-process default). Both give the
semantics below; the contract test suite runs against each.

Logical exchanges (their real names carry the namespace prefix, ``warren`` by default):

- ``create``    direct, routing key = workflow name, body ``{"id"?, "params"}`` (contract).
- ``events``    topic, routing key ``<workflow>.<instance_id>.<event_type>`` (contract).
- ``lifecycle`` topic, routing key ``<workflow>.<instance_id>.<kind>`` (contract).
- ``dead``      where rejected messages go, with the reason in ``x-warren-reason`` (contract).
- ``internal``  engine-to-engine messages (wake-ups, step completions), routing key =
  workflow name; the only exchange that accepts a delay.

Every workflow has one durable queue fed by ``create``, ``events`` (``<workflow>.#``) and
``internal`` (immediate and delayed).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

Exchange = Literal["create", "events", "lifecycle", "dead", "internal"]
HeaderValue = str | int | float | bool | None

REASON_HEADER = "x-warren-reason"
"""Header carrying why a message was dead-lettered."""
ORIGIN_EXCHANGE_HEADER = "x-warren-origin-exchange"
"""Header carrying the logical exchange a dead-lettered message arrived on."""
ORIGIN_ROUTING_KEY_HEADER = "x-warren-origin-routing-key"
"""Header carrying the routing key a dead-lettered message arrived with."""
STORED_HEADER = "x-warren-stored"
"""Set by Warren's client on create messages whose instance row it already inserted."""
ORIGINAL_PROPERTY_PREFIX = "x-warren-original-"
"""A dead-lettered copy keeps the original message's properties (content type and encoding,
correlation id, reply-to, type, app id, timestamp) as headers with this prefix."""
REROUTED_HEADER = "x-warren-rerouted"
"""Set on a message a worker published again from the unroutable queue: if it comes back
unroutable, it is dead-lettered instead of going round again."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to publish.

    Attributes:
        exchange: Logical exchange to publish to.
        routing_key: Routing key; for ``internal`` the workflow name.
        body: Raw body bytes (JSON for everything Warren publishes).
        delay_ms: Hold the message this long before it can be consumed. Only valid on
            ``internal``; a message is never delivered before its delay has passed.
        message_id: AMQP message id (events de-duplicate on it).
        headers: Extra AMQP headers.
        priority: 1 puts the message ahead of priority-0 ones in its workflow queue: the
            engine's continuations (wake-ups, step results) go before new work, so a backlog
            of creations cannot make running instances late.
        persistent: ``False`` for a reminder of what SQL already holds (the create message
            of an instance Warren's client stored): the broker keeps it in memory only, so
            its confirm waits for no disk write. If the broker restarts and loses it, the
            sweeper starts the instance from SQL. Delayed messages are never persistent.
    """

    exchange: Exchange
    routing_key: str
    body: bytes
    delay_ms: int = 0
    message_id: str | None = None
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    priority: int = 0
    persistent: bool = True


class Delivery(abc.ABC):
    """A consumed message that must be settled exactly once (ack, nack or dead_letter)."""

    body: bytes
    headers: Mapping[str, HeaderValue]
    exchange: Exchange
    routing_key: str
    message_id: str | None
    redelivered: bool

    @abc.abstractmethod
    async def ack(self) -> None:
        """Remove the message from its queue."""

    @abc.abstractmethod
    async def nack(self, *, requeue: bool = True) -> None:
        """Return the message to its queue (``requeue=True``) or dead-letter it without a reason."""

    @abc.abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Move the message to the ``dead`` exchange with ``reason`` in a header, then ack it.

        At-least-once: the copy is confirmed before the original is acked.
        """

    @property
    def returned(self) -> bool:
        """Whether the broker has taken the message back already (its consumer or channel
        is gone): settling it does nothing now, and another consumer may have it."""
        return False


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


class Consumer(abc.ABC):
    """A running subscription to one workflow queue."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop delivering; unsettled deliveries are returned to the queue by the broker."""


class Subscription(AsyncIterator[Delivery], abc.ABC):
    """Messages published to a topic/fanout exchange that match one binding key.

    ``async with`` binds on entry and closes on exit.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind; every message published after this returns is received. Idempotent (the
        first ``__anext__`` binds too); a subscription closed before or while it binds
        is left bound to nothing."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Unbind and end the iteration; idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Broker(abc.ABC):
    """Connection to a message broker with Warren's topology.

    Implementations must make ``declare_workflow`` idempotent, confirm every publish before
    returning (raising :class:`broker.PublishError` when a message was not routed to any queue
    or was refused), and redeliver every delivery that was neither acked nor dead-lettered when
    its consumer goes away.
    """

    namespace: str

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect (retrying with backoff) and declare the shared topology. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel consumers and close the connection. Idempotent."""

    @abc.abstractmethod
    async def declare_workflow(self, workflow: str) -> None:
        """Declare the workflow's durable queue and its bindings. Idempotent."""

    @abc.abstractmethod
    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish messages (persistent unless they say otherwise), pipelined, and wait
        until all are confirmed."""

    @abc.abstractmethod
    async def queue_depth(self, workflow: str) -> int:
        """Messages waiting in the workflow's queue, not counting unsettled deliveries."""

    @abc.abstractmethod
    async def consume(
        self, workflow: str, handler: DeliveryHandler, *, prefetch: int
    ) -> Consumer:
        """Deliver the workflow queue's messages to ``handler`` with at most ``prefetch`` unsettled.

        The handler is called on the event loop; it settles the delivery itself (possibly
        later, from another task). An exception escaping the handler requeues the delivery.
        """

    @abc.abstractmethod
    async def consume_unroutable(self, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        """Deliver ``create``/``events`` messages that matched no workflow queue.

        Publishers outside Warren do not ask for returns, and RabbitMQ drops unroutable
        messages silently; an alternate exchange keeps them here so the engine can
        dead-letter them with a reason instead.
        """

    @abc.abstractmethod
    def subscribe(self, exchange: Exchange, binding_key: str) -> Subscription:
        """Iterate over messages published to a topic/fanout exchange once bound.

        Backed by an exclusive, auto-deleted queue; deliveries need no settling.
        """

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class PublishError(Exception):
    """A message was not confirmed by the broker (unroutable, nacked or connection lost)."""
