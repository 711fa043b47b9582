"""Timer wake-ups sent ahead of time and held by the worker until they are due.

Every hop through the broker's delay queues can make a delayed message late, and more so
when the broker shares a busy machine: with the workers creating instances as fast as they
could (``python -m benchmarks sleepers --n 5000``), wake-ups reached a worker p50 0.2-0.36 s
and p99 0.6-0.85 s after they were due. So a timer's wake-up is published ``lead_ms`` before
it is due and carries its due time, and a worker that receives it early holds it in memory
and hands it to its turns on time, by its own clock, the one the turn's replay checks.

A held wake-up is acked at once, so that held ones never fill the prefetch window (they can
be many: every wake-up of the next ``lead_ms``). That loses nothing: the SQL timer is the
truth, and if the worker dies holding one, the sweeper re-issues it once it is overdue, as
for any lost wake-up. On a graceful stop, held wake-ups are handed back to the broker.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import structlog

from broker import Broker, Delivery, Envelope, EnvelopeError, OutgoingMessage, turn_message
from engine._clock import now_ms

log = structlog.get_logger("warren.early_wake")

_SKEW_MS = 5_000
"""Hold a wake-up at most this much beyond ``lead_ms``: a larger gap is a clock that differs
from the publisher's, and the turn itself then decides whether the timer is due."""


class EarlyWakeups:
    """Wake-ups received before they are due, each waiting for its time."""

    def __init__(self, broker: Broker, put: Callable[[str, Delivery], None], *,
                 lead_ms: int) -> None:
        if lead_ms < 0:
            raise ValueError(f"lead_ms must be >= 0, got {lead_ms}")
        self._lead_ms = lead_ms
        self._broker = broker
        self._put = put
        self._held: dict[int, tuple[asyncio.TimerHandle, str, Envelope]] = {}
        self._tokens = itertools.count()
        self.held_total = 0
        """Wake-ups held so far (for tests and benchmarks)."""

    def __len__(self) -> int:
        return len(self._held)

    def message(self, workflow: str, instance_id: str, due_ms: int) -> OutgoingMessage:
        """The wake-up of a timer: sent ``lead_ms`` ahead, carrying when it is due."""
        return turn_message(workflow, "wake", instance_id, due_ms=due_ms,
                            delay_ms=max(0, due_ms - now_ms() - self._lead_ms))

    async def hold(self, workflow: str, delivery: Delivery) -> bool:
        """Hold ``delivery`` if it is a wake-up that is not due yet; False if it is not."""
        if delivery.exchange != "internal":
            return False
        try:
            envelope = Envelope.decode(delivery.body)
        except EnvelopeError:
            return False  # the turn loop dead-letters it
        if envelope.due_ms is None:
            return False
        wait_ms = min(envelope.due_ms - now_ms(), self._lead_ms + _SKEW_MS)
        if wait_ms <= 0:
            return False
        await delivery.ack()
        token = next(self._tokens)
        # + 1 ms: asyncio may run a timer up to its clock resolution early, and a turn that
        # finds its timer not quite due would only sleep again.
        handle = asyncio.get_running_loop().call_later(
            (wait_ms + 1) / 1000, self._release, token, _Acked(delivery, self._broker))
        self._held[token] = (handle, workflow, envelope)
        self.held_total += 1
        return True

    def _release(self, token: int, delivery: Delivery) -> None:
        _, workflow, _ = self._held.pop(token)
        self._put(workflow, delivery)

    def hand_back(self) -> list[OutgoingMessage]:
        """Stop holding: the wake-ups still held, to publish for other workers."""
        messages = []
        for handle, workflow, envelope in self._held.values():
            handle.cancel()
            assert envelope.due_ms is not None
            messages.append(self.message(workflow, envelope.instance_id, envelope.due_ms))
        self._held.clear()
        return messages


class _Acked(Delivery):
    """A held wake-up, acked when it was put on hold.

    Settling it again does nothing, except that a requeue (its turn failed) publishes it
    again, as the broker would have redelivered it.
    """

    def __init__(self, delivery: Delivery, broker: Broker) -> None:
        self.body, self.headers = delivery.body, delivery.headers
        self.exchange, self.routing_key = delivery.exchange, delivery.routing_key
        self.message_id, self.redelivered = delivery.message_id, delivery.redelivered
        self._broker = broker

    async def ack(self) -> None:
        pass

    async def nack(self, *, requeue: bool = True) -> None:
        if requeue:
            await self._broker.publish([OutgoingMessage(
                "internal", self.routing_key, self.body, message_id=self.message_id,
                priority=1)])

    async def dead_letter(self, reason: str) -> None:
        log.warning("a held wake-up cannot be dead-lettered; dropped (its timer is in SQL)",
                    reason=reason, key=self.routing_key)
