"""The RabbitMQ :class:`Broker` on aio-pika, with plugin-free delayed delivery.

The topology (names, bindings, delay queues) is described in :mod:`broker._topology`. Points
of RabbitMQ behaviour this module relies on:

- A publisher confirm alone does not mean a queue took the message: unroutable messages are
  confirmed too. Every publish is ``mandatory`` on a channel with ``on_return_raises`` so the
  return becomes an error, except on ``lifecycle`` (see ``UNCHECKED_EXCHANGES``), whose
  notifications go on a second channel without confirms: in order, but at most once.
- ``basic.cancel`` leaves delivered-but-unacked messages with the channel, so a consumer gets
  its own channel and cancelling closes it: only that returns unsettled messages to the queue.
- Messages expire only from the head of a queue. Each delay queue has a single TTL, so it
  expires in arrival order; a delay spends exactly ``d * 16**p`` ms in one queue for each
  non-zero hexadecimal digit ``d`` at position ``p``, each measured from when it entered that
  queue, so it never ends early.
- Dead-lettering out of a classic queue is at-most-once: a delayed message can be lost if the
  broker dies mid-delay. The SQL timer and the engine's sweeper repair that. Delayed messages
  are therefore published transient: persisting every hop through the delay queues bought
  nothing and made them late (10,000 delays of up to 10 s: p99 1.25 s persistent, 0.19 s
  transient, ``python -m benchmarks.delay_lateness``). So is any message marked not
  ``persistent`` (a create whose instance Warren's client already stored). A delayed message
  for a workflow whose queue does not exist is confirmed (it reaches a delay queue) and dropped
  at the end of its delay.
- Delays above ``Topology.max_delay_ms`` (about 397 days by default) are chained: the message
  carries the rest in ``x-warren-delay-remaining-ms`` and the consumer re-delays it instead of
  handling it, so even those never arrive early.
- aiormq gives every message published without a ``message_id`` a random one, and matches a
  ``basic.return`` to its publish by message id: two unconfirmed publishes sharing an id on one
  channel can have a return attributed to the wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from aiormq.abc import ChannelFrame
from pamqp.common import FieldTable, FieldValue
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from broker._base import (
    ORIGIN_EXCHANGE_HEADER,
    ORIGIN_ROUTING_KEY_HEADER,
    ORIGINAL_PROPERTY_PREFIX,
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
from broker._frames import publish_frames, settle_frame
from broker._topology import (
    DEFAULT_DELAY_BITS,
    DEFAULT_NAMESPACE,
    EXCHANGE_TYPES,
    REMAINING_DELAY_HEADER,
    UNCHECKED_EXCHANGES,
    Topology,
    validate_message,
)
from broker._utf8 import readable, tolerate_invalid_utf8

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)

_CONNECT_ERRORS = (aio_pika.exceptions.AMQPConnectionError, ConnectionError, OSError, TimeoutError)
# Settling on a channel that is gone: the broker has already requeued the message.
_CHANNEL_GONE = (ChannelInvalidStateError, AMQPError, ConnectionError)


async def _connected(connection: AbstractRobustConnection) -> AbstractRobustConnection:
    """``connection``, connected; closed if that fails. (``aio_pika.connect_robust`` drops
    a failed connection unclosed: its finalizer then schedules a close that never runs.)"""
    try:
        await connection.connect(timeout=10)
    except BaseException:
        with contextlib.suppress(Exception):  # the connect error is the one to report
            await connection.close()
        raise
    return connection


_TRANSIENT = int(aio_pika.DeliveryMode.NOT_PERSISTENT)
_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


def _forget_message_id(raw: aiormq.Channel, message_id: str, tag: int,
                       _settled: object = None) -> None:
    """Drop a publish's message id from the channel's return matching, unless a later
    publish has taken it over (also a done-callback of the publish's confirmation)."""
    if raw.message_id_delivery_tag.get(message_id) == tag:
        del raw.message_id_delivery_tag[message_id]


def _table(values: Mapping[str, FieldValue]) -> FieldTable:
    return dict(values)


# Properties a dead-lettered copy keeps as x-warren-original-<name> headers.
_KEPT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "type",
                    "app_id", "timestamp")


def _clean_headers(raw: Mapping[str, Any] | None) -> dict[str, HeaderValue]:
    """Scalar headers only; drops RabbitMQ's dead-letter history (``x-death`` and friends)."""
    headers: dict[str, HeaderValue] = {}
    for key, value in (raw or {}).items():
        if key == "x-death" or key.startswith(("x-first-death-", "x-last-death-")):
            continue
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, Decimal):
            value = float(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        if value is None or isinstance(value, str | int | float | bool):
            headers[key] = value
    return headers


class _RabbitDelivery(Delivery):
    def __init__(
        self,
        broker: RabbitBroker,
        message: AbstractIncomingMessage,
        consumer: _RabbitConsumer | None,
    ) -> None:
        topology = broker.topology
        real_exchange = message.exchange or ""
        headers = _clean_headers(message.headers)
        remaining_delay_ms = headers.pop(REMAINING_DELAY_HEADER, None)
        self.body = message.body
        # Anything else (e.g. the default exchange) can only be an engine-side publish.
        self.exchange = topology.logical_exchange(real_exchange) or "internal"
        # What remains of a long delay: only the engine's own delayed messages have one.
        self.remaining_delay_ms = remaining_delay_ms if self.exchange == "internal" else None
        routing_key, key_ok = readable(
            topology.logical_routing_key(real_exchange, message.routing_key or ""))
        message_id, id_ok = readable(message.message_id or "")
        names_ok = True
        if not all(name.isascii() for name in headers):  # rare: look closer
            names = {name: readable(name) for name in headers}
            headers = {names[name][0]: value for name, value in headers.items()}
            names_ok = all(ok for _, ok in names.values())
        self.headers = headers
        self.routing_key = routing_key
        self.message_id = None if message.message_id is None else message_id
        # Why the delivery cannot be taken as sent (its consumer dead-letters it), if so.
        self.unreadable = None if key_ok and id_ok and names_ok else (
            "routing key, message id or a header name is not UTF-8 "
            "(the bytes that are not are shown as U+FFFD)")
        self.redelivered = bool(message.redelivered)
        self._broker = broker
        self._message = message
        self._consumer = consumer  # None: auto-acked (subscriptions, get_dead)
        self.settled = False

    @property
    def returned(self) -> bool:
        if self._consumer is None:
            return False
        if not self._consumer.active:
            return True
        try:
            channel = self._message.channel  # aio-pika raises once the channel is closed
        except ChannelInvalidStateError:
            return True
        return bool(getattr(channel, "is_closed", False))

    def _begin_settle(self) -> bool:
        if self._consumer is None:
            return False
        if self.settled:
            raise RuntimeError("delivery already settled")
        self.settled = True
        if not self._consumer.active:
            self._broker.log.debug("settling after cancel is a no-op; the message was requeued")
        return self._consumer.active

    async def ack(self) -> None:
        if self._begin_settle():
            await self._quietly(self._settle(ack=True))

    async def nack(self, *, requeue: bool = True) -> None:
        if self._begin_settle():
            await self._quietly(self._settle(ack=False, requeue=requeue))

    async def _settle(self, *, ack: bool, requeue: bool = True) -> None:
        assert self._consumer is not None and self._message.delivery_tag is not None
        raw = self._message.channel  # the channel it came on: a tag means nothing elsewhere
        assert isinstance(raw, aiormq.Channel)
        await self._consumer.settlements(raw).write(
            settle_frame(raw.number, self._message.delivery_tag, ack=ack, requeue=requeue))

    async def dead_letter(self, reason: str) -> None:
        if self._consumer is not None:
            if self.settled:
                raise RuntimeError("delivery already settled")
            if not self._consumer.active:
                self.settled = True
                return  # back in its queue already; a copy now would be a duplicate
        headers = dict(self.headers)
        headers[REASON_HEADER] = reason
        headers[ORIGIN_EXCHANGE_HEADER] = self.exchange
        headers[ORIGIN_ROUTING_KEY_HEADER] = self.routing_key
        # The copy is published as Warren publishes (JSON, its own properties): what the
        # publisher had set that says how to read or answer the body goes along in headers.
        for name in _KEPT_PROPERTIES:
            value = getattr(self._message, name, None)
            if value is not None:
                headers[f"{ORIGINAL_PROPERTY_PREFIX}{name.replace('_', '-')}"] = readable(
                    value.isoformat() if isinstance(value, datetime) else str(value))[0]
        copy = OutgoingMessage(
            "dead", self.routing_key, self.body, message_id=self.message_id, headers=headers
        )
        await self._broker.publish([copy])
        await self.ack()

    async def _quietly(self, settle: Awaitable[None]) -> None:
        try:
            await settle
        except _CHANNEL_GONE as exc:
            self._broker.log.warning(
                "settle failed, channel gone; the broker redelivers", error=repr(exc)
            )


def _channel_closing(raw: aiormq.Channel) -> bool:
    """Whether ``raw`` takes no more settlements: aiormq's own ``basic_ack`` refuses once a
    ``channel.close`` has arrived (its private close event), a pass or two before
    ``is_closed`` turns true. A settlement sent after the close-ok would be a frame on a
    channel the broker has freed: a connection error."""
    close_event = getattr(raw, "_Channel__close_event", None)
    return raw.is_closed or (close_event is not None and close_event.is_set())


class _Settlements:
    """The acks and nacks of one consumer channel, written together.

    aio-pika queues, writes and drains every settlement on its own: a turn that acks its
    batch made a socket write per delivery (py-spy: 6 % of a busy worker in the acks, 9 %
    in socket writes). Settlements issued in the same pass of the event loop (a turn's
    ``gather`` of acks) go out here as one write, and each still waits for it to drain.
    """

    def __init__(self, raw: aiormq.Channel) -> None:
        self.raw = raw
        self._frames: list[bytes] = []
        self._drained: asyncio.Future[Any] | None = None
        self._writers: set[asyncio.Task[None]] = set()

    async def write(self, frame: bytes) -> None:
        if _channel_closing(self.raw):
            raise ChannelInvalidStateError(f"{self.raw!r} closed")
        if self._drained is None:
            # The writer runs after the tasks already scheduled in this pass, so their
            # settlements join this write.
            drained = self._drained = self.raw.create_future()
            writer = asyncio.create_task(self._write_pending(drained))
            self._writers.add(writer)
            writer.add_done_callback(functools.partial(self._writer_done, drained))
        drained = self._drained
        self._frames.append(frame)
        await asyncio.shield(drained)  # one caller's cancellation must not fail the others

    async def _write_pending(self, drained: asyncio.Future[Any]) -> None:
        frames, self._frames, self._drained = self._frames, [], None
        if drained.done() or _channel_closing(self.raw):
            # The channel closed since these were issued: the broker requeues them.
            if not drained.done():
                drained.set_exception(ChannelInvalidStateError(f"{self.raw!r} closed"))
            return
        await self.raw.write_queue.put(
            ChannelFrame(b"".join(frames), should_close=False, drain_future=drained))

    def _writer_done(self, drained: asyncio.Future[Any], writer: asyncio.Task[None]) -> None:
        self._writers.discard(writer)
        if not writer.cancelled() and writer.exception() is None:
            return  # queued: the connection's writer settles ``drained``
        if self._drained is drained:  # cancelled before it took its batch
            self._frames, self._drained = [], None
        if not drained.done():
            drained.set_exception(ChannelInvalidStateError("settling failed"))


class _RabbitConsumer(Consumer):
    def __init__(self, broker: RabbitBroker, channel: AbstractChannel, handler: DeliveryHandler):
        self._broker = broker
        self._channel = channel
        self._handler = handler
        self._settlements: _Settlements | None = None
        self.active = True

    def settlements(self, raw: aiormq.Channel) -> _Settlements:
        """The settlement writer of ``raw`` (a new one once the channel was replaced)."""
        if self._settlements is None or self._settlements.raw is not raw:
            self._settlements = _Settlements(raw)
        return self._settlements

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if not self.active:
            return  # arrived while closing: the channel close requeues it
        delivery = _RabbitDelivery(self._broker, message, self)
        if delivery.unreadable is not None:
            self._broker.log.warning("message rejected", reason=delivery.unreadable,
                                     key=delivery.routing_key)
            try:
                await delivery.dead_letter(delivery.unreadable)
            except Exception:  # the dead-letter publish failed: keep it, try again later
                self._broker.log.exception("dead-lettering failed; requeueing",
                                           key=delivery.routing_key)
                await delivery.nack(requeue=True)
            return
        if isinstance(delivery.remaining_delay_ms, int) and delivery.remaining_delay_ms > 0:
            await self._redelay(delivery, delivery.remaining_delay_ms)
            return
        try:
            await self._handler(delivery)
        except Exception:
            self._broker.log.exception(
                "delivery handler failed; requeueing", key=delivery.routing_key
            )
            if not delivery.settled:
                await delivery.nack(requeue=True)

    async def _redelay(self, delivery: _RabbitDelivery, remaining_ms: int) -> None:
        again = OutgoingMessage(
            "internal",
            delivery.routing_key,
            delivery.body,
            delay_ms=remaining_ms,
            message_id=delivery.message_id,
            headers=delivery.headers,
        )
        try:
            await self._broker.publish([again])
        except PublishError:
            self._broker.log.warning(
                "re-delaying a long delay failed; requeueing", key=delivery.routing_key
            )
            await delivery.nack(requeue=True)
            return
        await delivery.ack()

    async def cancel(self) -> None:
        if not self.active:
            return
        self.active = False
        self._broker._consumers.discard(self)
        try:
            await self._channel.close()
        except _CHANNEL_GONE as exc:
            self._broker.log.debug("consumer channel already closed", error=repr(exc))


class RabbitSubscription(Subscription):
    """Messages matching one binding, via an exclusive auto-delete queue.

    The queue is bound by :meth:`start` (or ``async with``, or the first ``__anext__``); only
    messages published after that are seen. Deliveries are auto-acked.
    """

    def __init__(self, broker: RabbitBroker, exchange: Exchange, binding_key: str) -> None:
        self._broker = broker
        self._exchange = broker.topology.exchange(exchange)
        self._binding_key = binding_key
        self._messages: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        """Declare and bind the queue; idempotent."""
        async with self._lock:
            if self._channel is not None or self._closed:
                return
            channel = await self._broker._require_connection().channel(publisher_confirms=False)
            # Named by us: a robust channel re-declares it after a reconnect, which RabbitMQ
            # refuses for server-generated "amq.gen-" names.
            name = f"{self._broker.namespace}.subscription.{uuid.uuid4().hex}"
            try:
                queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
                await queue.bind(self._exchange, routing_key=self._binding_key)
                await queue.consume(self._on_message, no_ack=True)
            except BaseException:
                await self._close_channel(channel)
                raise
            if self._closed:  # aclose() ran while it bound: nobody will read the queue
                await self._close_channel(channel)
                return
            self._channel = channel

    async def _close_channel(self, channel: AbstractChannel) -> None:
        """Close ``channel``; one the connection already lost (the broker closing, a
        dropped connection) needs nothing more."""
        try:
            await channel.close()
        except _CHANNEL_GONE as exc:
            self._broker.log.debug("subscription channel already closed", error=repr(exc))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._messages.put_nowait(_RabbitDelivery(self._broker, message, None))

    async def __anext__(self) -> Delivery:
        if self._closed and self._messages.empty():
            raise StopAsyncIteration
        await self.start()
        item = await self._messages.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop the subscription (its queue is deleted with its channel)."""
        if self._closed:
            return
        self._closed = True
        self._messages.put_nowait(None)
        self._broker._subscriptions.discard(self)
        if self._channel is not None:
            await self._close_channel(self._channel)


class RabbitBroker(Broker):
    """:class:`Broker` on RabbitMQ (3.8+; no plugins needed).

    Args:
        url: ``amqp://`` or ``amqps://`` URL, including the vhost.
        namespace: Prefix of every exchange and queue.
        max_delay_bits: The longest delay one pass through the delay queues can express is
            ``2**max_delay_bits - 1`` ms (default 35: about 397 days); longer ones are
            chained. Must be the same for every process of a namespace.
        connect_attempts: Attempts of the initial connect before giving up.
        publish_timeout_s: Seconds to wait for a publisher confirm.

    Attributes:
        topology: The namespace's names and bindings.
        log: structlog logger bound to this broker's namespace and host.
    """

    def __init__(
        self,
        url: str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        max_delay_bits: int = DEFAULT_DELAY_BITS,
        connect_attempts: int = 8,
        publish_timeout_s: float = 30.0,
    ) -> None:
        self.topology = Topology(namespace, max_delay_bits)
        self.namespace = namespace
        self._url = url
        self._connect_attempts = connect_attempts
        self._publish_timeout_s = publish_timeout_s
        self.log = _log.bind(broker="rabbitmq", namespace=namespace, host=URL(url).host)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._unconfirmed: AbstractChannel | None = None  # for UNCHECKED_EXCHANGES
        # Passive declares (queue_depth): an error there (a queue deleted under us) closes
        # this channel only, and a declare never waits behind a batch of publishes.
        self._inspector: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._dead_queue: AbstractQueue | None = None
        self._declared: set[str] = set()
        self._consumers: set[_RabbitConsumer] = set()
        self._subscriptions: set[RabbitSubscription] = set()
        self._lock = asyncio.Lock()

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        tolerate_invalid_utf8()  # before any frame is read
        async with self._lock:
            if self._channel is not None:
                return
            connection = await self._connect_with_retry()
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                unconfirmed = await connection.channel(publisher_confirms=False)
                self._inspector = await connection.channel(publisher_confirms=False)
                await self._declare_shared(channel)
            except BaseException:
                await connection.close()
                raise
            self._connection, self._channel, self._unconfirmed = connection, channel, unconfirmed
            self.log.info("connected")

    async def _connect_with_retry(self) -> AbstractRobustConnection:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._connect_attempts),
            wait=wait_random_exponential(multiplier=0.2, max=10),
            retry=retry_if_exception_type(_CONNECT_ERRORS),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await _connected(aio_pika.RobustConnection(URL(self._url)))
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning(
            "connect failed, retrying", attempt=state.attempt_number, wait_s=wait, error=repr(error)
        )

    async def _declare_shared(self, channel: AbstractChannel) -> None:
        # About 800 declarations and bindings: sent with no-wait in one burst rather than 800
        # round trips. They are all durable, so the robust channel need not replay them.
        raw = await channel.get_underlay_channel()
        topology = self.topology
        exchanges = {topology.exchange(e): kind for e, kind in EXCHANGE_TYPES.items()}
        arguments_of = {topology.exchange(e): topology.exchange_arguments(e)
                        for e in EXCHANGE_TYPES}
        exchanges[topology.delay_deliver_exchange] = "topic"
        for position in range(topology.delay_positions):
            exchanges[topology.delay_exchange(position)] = "topic"
        # Declared before the exchanges that name it as their alternate exchange.
        await raw.exchange_declare(topology.unroutable, exchange_type="fanout", durable=True,
                                   nowait=True)
        await raw.queue_declare(topology.unroutable, durable=True, nowait=True)
        await raw.queue_bind(topology.unroutable, topology.unroutable, nowait=True)
        for name, kind in exchanges.items():
            await raw.exchange_declare(name, exchange_type=kind, durable=True, nowait=True,
                                       arguments=_table(arguments_of.get(name, {})))
        await raw.queue_declare(topology.dead_queue, durable=True, nowait=True)
        await raw.queue_bind(topology.dead_queue, topology.exchange("dead"), nowait=True)
        for position, digit in topology.delay_queues():
            arguments = _table(topology.delay_queue_arguments(position, digit))
            await raw.queue_declare(
                topology.delay_queue(position, digit), durable=True, arguments=arguments,
                nowait=True,
            )
        for position in range(topology.delay_positions):
            source = topology.delay_exchange(position)
            for target, key in topology.delay_queue_bindings(position):
                await raw.queue_bind(topology.delay_queue(*target), source, key, nowait=True)
            await raw.exchange_bind(
                topology.delay_deliver_exchange,
                source,
                topology.delay_deliver_binding(position),
                nowait=True,
            )
        # RabbitMQ handles a channel's methods in order: once this synchronous one is answered,
        # all of the above are done; had any failed, the channel is closed and this raises.
        await raw.queue_declare(topology.dead_queue, passive=True)
        for name in exchanges:
            self._exchanges[name] = await channel.get_exchange(name, ensure=False)
        self._dead_queue = await channel.get_queue(topology.dead_queue, ensure=False)

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.cancel()
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        connection, self._connection = self._connection, None
        self._channel = self._unconfirmed = self._inspector = None
        self._exchanges.clear()
        self._declared.clear()
        if connection is not None:
            await connection.close()
            self.log.info("closed")

    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError("broker is not connected: call connect() or use 'async with'")
        return self._connection

    def _require_channel(self) -> AbstractChannel:
        if self._channel is None:
            raise RuntimeError("broker is not connected: call connect() or use 'async with'")
        return self._channel

    # -- the Broker interface ----------------------------------------------------------------

    async def declare_workflow(self, workflow: str) -> None:
        channel = self._require_channel()
        name = self.topology.workflow_queue(workflow)
        # The robust channel remembers every declaration to replay it after a reconnect, so
        # declare each workflow once per connection.
        if name in self._declared:
            return
        queue = await channel.declare_queue(
            name, durable=True, arguments=_table(self.topology.workflow_queue_arguments())
        )
        for exchange, key in self.topology.workflow_bindings(workflow):
            await queue.bind(self._exchanges[exchange], routing_key=key)
        self._declared.add(name)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        channel = self._require_channel()
        assert self._unconfirmed is not None
        for message in messages:
            validate_message(message)
        # Straight to aiormq, with one deadline for the whole batch: aio-pika's Message (its
        # validating __setattr__) and a timer per publish were a tenth of a worker's CPU.
        # Lifecycle notifications go without confirms: a confirm doubled the CPU a publish
        # costs, and bought nothing, since a turn never publishes them again.
        checked = [m for m in messages if m.exchange not in UNCHECKED_EXCHANGES]
        unchecked = [m for m in messages if m.exchange in UNCHECKED_EXCHANGES]
        groups = [group for group in (unchecked, checked) if group]
        try:
            # The deadline covers waiting for the channels too: while the connection is
            # being re-established they are not there, and a publish must not wait forever.
            async with asyncio.timeout(self._publish_timeout_s):
                confirmed = await channel.get_underlay_channel()
                unconfirmed = await self._unconfirmed.get_underlay_channel()
                assert isinstance(unconfirmed, aiormq.Channel)
                assert isinstance(confirmed, aiormq.Channel)
                # One write for all the notifications, one for all the others.
                publishes: list[Awaitable[list[BaseException | None]]] = []
                if unchecked:
                    publishes.append(self._publish_unconfirmed(unconfirmed, unchecked))
                if checked:
                    publishes.append(self._publish_confirmed(confirmed, checked))
                results = await asyncio.gather(*publishes, return_exceptions=True)
        except TimeoutError:
            raise PublishError(f"{len(messages)} messages not all confirmed within "
                               f"{self._publish_timeout_s} s (is the broker reachable?)"
                               ) from None
        failures: list[tuple[OutgoingMessage, BaseException]] = []
        for group, result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):  # the group's write itself failed
                failures.append((group[0], result))
            else:
                failures += [(m, e) for m, e in zip(group, result, strict=True) if e is not None]
        if failures:
            message, error = failures[0]
            raise PublishError(
                f"{len(failures)} of {len(messages)} messages failed; first: "
                f"{message.exchange}:{message.routing_key}: {error!r}"
            ) from error

    async def _publish_confirmed(self, raw: aiormq.Channel, messages: Sequence[OutgoingMessage]
                                 ) -> list[BaseException | None]:
        """Publish ``messages`` as ``mandatory`` in one write to the socket and wait for the
        broker's confirm of each; return each one's failure (a return, a nack) or ``None``.

        ``basic_publish`` takes the channel's lock, waits for the writer and makes one socket
        write per message. Here the same bookkeeping (a delivery tag and a confirmation
        future per message, its message id for matching a ``basic.return``) is done for all
        of them under one hold of the lock, and their frames go out together, in order.
        """
        ids = [m.message_id for m in messages if m.message_id]
        if len(set(ids)) != len(ids):
            # A return is matched to its publish by message id: messages sharing one go
            # one at a time, each confirmed before the next is sent.
            return [outcome for message in messages
                    for outcome in await self._publish_confirmed(raw, [message])]
        frames: list[bytes] = []
        pending: list[tuple[asyncio.Future[Any], str, int]] = []
        # An id an earlier publish still awaits a confirm for: its mapping comes back if
        # this publish is rolled back.
        earlier: dict[str, int] = {}
        drained: asyncio.Future[Any] | None = None
        async with raw.lock:
            first_tag = raw.delivery_tag
            try:
                for message in messages:
                    # Returns are matched by message id, so every message gets one.
                    message_id = message.message_id or uuid.uuid4().hex
                    frames += self._frames(raw, message, message_id, mandatory=True)
                    raw.delivery_tag += 1
                    confirmation = raw.create_future()
                    raw.confirmations[raw.delivery_tag] = confirmation
                    if message_id in raw.message_id_delivery_tag:
                        earlier[message_id] = raw.message_id_delivery_tag[message_id]
                    raw.message_id_delivery_tag[message_id] = raw.delivery_tag
                    pending.append((confirmation, message_id, raw.delivery_tag))
                drained = raw.create_future()
                await raw.write_queue.put(
                    ChannelFrame(b"".join(frames), should_close=False, drain_future=drained))
            except BaseException:
                # Nothing was queued: the broker never saw these tags, so they are reused.
                raw.delivery_tag = first_tag
                for confirmation, message_id, tag in pending:
                    raw.confirmations.pop(tag, None)
                    _forget_message_id(raw, message_id, tag)
                    confirmation.cancel()
                raw.message_id_delivery_tag.update(earlier)
                if drained is not None:
                    drained.cancel()
                raise
            # Queued: from now on a message id is forgotten when its confirmation settles in
            # any way (a timeout cancels it), as basic_publish does; a late basic.return
            # must not find a cancelled future (setting it would close the channel).
            for confirmation, message_id, tag in pending:
                confirmation.add_done_callback(
                    functools.partial(_forget_message_id, raw, message_id, tag))
            await drained
        outcomes = await asyncio.gather(*(c for c, _, _ in pending), return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    async def _publish_unconfirmed(self, raw: aiormq.Channel,
                                   messages: Sequence[OutgoingMessage]
                                   ) -> list[BaseException | None]:
        """Publish ``messages`` (no confirms, not mandatory) as one write to the socket.

        ``basic_publish`` takes the channel's lock, waits for the writer and makes one
        socket write per message: with three lifecycle events per step, that was about 40 %
        of a worker's busy time (py-spy). Without confirms there is nothing to wait for per
        message, so their frames are queued together, in order, under one hold of the lock.
        """
        payload = b"".join(frame for message in messages for frame in
                           self._frames(raw, message, message.message_id, mandatory=False))
        async with raw.lock:
            await raw.write_queue.put(ChannelFrame(payload, should_close=False))
        return [None] * len(messages)

    def _frames(self, raw: aiormq.Channel, message: OutgoingMessage, message_id: str | None,
                *, mandatory: bool) -> list[bytes]:
        """The wire frames of ``message`` on ``raw``; a delayed one goes to its delay level."""
        headers = message.headers
        exchange = self.topology.exchange(message.exchange)
        routing_key = message.routing_key
        if message.delay_ms:
            delay, remaining = self.topology.split_delay(message.delay_ms)
            if remaining:
                headers = {**headers, REMAINING_DELAY_HEADER: remaining}
            exchange = self.topology.delay_entry_exchange
            routing_key = self.topology.delay_routing_key(delay, message.routing_key)
        return publish_frames(
            raw.number, raw.max_content_size, exchange, routing_key, message.body,
            mandatory=mandatory, content_type="application/json",
            headers=headers or None,
            delivery_mode=_PERSISTENT if message.persistent and not message.delay_ms
            else _TRANSIENT,
            message_id=message_id, priority=message.priority,
        )

    async def consume(self, workflow: str, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        await self.declare_workflow(workflow)
        channel = await self._require_connection().channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(
            self.topology.workflow_queue(workflow),
            durable=True,
            arguments=_table(self.topology.workflow_queue_arguments()),
        )
        consumer = _RabbitConsumer(self, channel, handler)
        # Manual acks; never message.process(), whose default rejects without requeue.
        await queue.consume(consumer.on_message, no_ack=False)
        self._consumers.add(consumer)
        return consumer

    async def consume_unroutable(self, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        channel = await self._require_connection().channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(self.topology.unroutable, durable=True)
        consumer = _RabbitConsumer(self, channel, handler)
        await queue.consume(consumer.on_message, no_ack=False)
        self._consumers.add(consumer)
        return consumer

    def subscribe(self, exchange: Exchange, binding_key: str) -> RabbitSubscription:
        self._require_connection()
        if exchange not in EXCHANGE_TYPES:
            raise ValueError(f"unknown exchange {exchange!r}")
        subscription = RabbitSubscription(self, exchange, binding_key)
        self._subscriptions.add(subscription)
        return subscription

    async def queue_depth(self, workflow: str) -> int:
        """Messages waiting in the workflow's queue (not counting unacked deliveries)."""
        await self.declare_workflow(workflow)
        assert self._inspector is not None
        # The underlying channel: a passive declare through the robust one would be replayed
        # on every reconnect.
        async with asyncio.timeout(self._publish_timeout_s):
            raw = await self._inspector.get_underlay_channel()
            result = await raw.queue_declare(self.topology.workflow_queue(workflow),
                                             passive=True)
        return int(result.message_count or 0)

    # -- helpers for tests and operations ----------------------------------------------------

    async def get_dead(self, timeout_s: float = 5.0) -> Delivery | None:
        """Remove and return the oldest message of the dead queue, waiting up to ``timeout_s``."""
        self._require_channel()
        assert self._dead_queue is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            message = await self._dead_queue.get(no_ack=True, fail=False)
            if message is not None:
                return _RabbitDelivery(self, message, None)
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(0.02)

    async def delete_topology(self, workflows: Sequence[str] = ()) -> None:
        """Delete this namespace's queues and exchanges (benchmarks, tests); then close."""
        for consumer in list(self._consumers):
            await consumer.cancel()
        raw = await self._require_channel().get_underlay_channel()
        topology = self.topology
        queues = [topology.workflow_queue(w) for w in workflows] + [topology.dead_queue]
        queues += [topology.delay_queue(*queue) for queue in topology.delay_queues()]
        for queue in queues:
            await raw.queue_delete(queue)
        for exchange in self._exchanges:
            await raw.exchange_delete(exchange)
        await self.close()
