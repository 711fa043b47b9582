"""Timer wake-ups arrive ahead of time and are held until due, never handed over early."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from broker import Delivery, Envelope, Exchange, OutgoingMessage
from broker.memory import MemoryBroker
from engine._clock import now_ms
from engine._early_wake import EarlyWakeups


class _Delivery(Delivery):
    def __init__(self, exchange: Exchange, body: bytes) -> None:
        self.body, self.headers, self.exchange = body, {}, exchange
        self.routing_key, self.message_id, self.redelivered = "wf", "m1", False
        self.acked = 0

    async def ack(self) -> None:
        self.acked += 1

    async def nack(self, *, requeue: bool = True) -> None: ...
    async def dead_letter(self, reason: str) -> None: ...


class _Published(MemoryBroker):
    def __init__(self) -> None:
        super().__init__("unused")
        self.sent: list[OutgoingMessage] = []

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.sent += messages


def _wake(due_ms: int | None) -> _Delivery:
    return _Delivery("internal", Envelope("wake", "i1", due_ms).encode())


async def test_a_wake_up_sent_ahead_is_acked_held_and_handed_over_once_due() -> None:
    handed: asyncio.Queue[tuple[str, Delivery, int]] = asyncio.Queue()
    early = EarlyWakeups(_Published(), lambda w, d: handed.put_nowait((w, d, now_ms())),
                         lead_ms=1000)
    due = now_ms() + 150
    message = early.message("wf", "i1", due)
    assert message.delay_ms == 0  # due within the lead: sent at once
    assert Envelope.decode(message.body).due_ms == due and message.priority == 1
    assert early.message("wf", "i1", now_ms() + 60_000).delay_ms in range(58_990, 59_001)
    delivery = _wake(due)
    assert await early.hold("wf", delivery)
    assert delivery.acked == 1 and len(early) == 1 and handed.empty()
    workflow, held, at = await asyncio.wait_for(handed.get(), 2)
    assert workflow == "wf" and held.body == delivery.body
    assert at >= due  # never early by the clock the turn's replay reads
    assert len(early) == 0 and early.held_total == 1
    await held.ack()  # settling the handed-over copy again is harmless
    assert delivery.acked == 1


@pytest.mark.parametrize("delivery", [
    _wake(None),  # the sweeper's re-issued wake-ups carry no due time
    _wake(1),  # already due
    _Delivery("internal", b"not an envelope"),
    _Delivery("create", b"{}"),
])
async def test_what_is_due_or_not_a_timer_wake_up_is_not_held(delivery: _Delivery) -> None:
    early = EarlyWakeups(_Published(), lambda w, d: None, lead_ms=1000)
    assert not await early.hold("wf", delivery)
    assert delivery.acked == 0 and len(early) == 0


async def test_held_wake_ups_are_handed_back_on_stop_and_republished_on_a_failed_turn() -> None:
    broker = _Published()
    handed: list[Delivery] = []
    early = EarlyWakeups(broker, lambda w, d: handed.append(d), lead_ms=1000)
    due = now_ms() + 800
    assert await early.hold("wf", _wake(due))
    [message] = early.hand_back()
    assert Envelope.decode(message.body) == Envelope("wake", "i1", due)
    assert message.routing_key == "wf" and message.delay_ms == 0
    assert len(early) == 0
    # A turn that fails requeues its messages: a held one is published again.
    due_now: asyncio.Queue[Delivery] = asyncio.Queue()
    held_early = EarlyWakeups(broker, lambda w, d: due_now.put_nowait(d), lead_ms=1000)
    assert await held_early.hold("wf", _wake(now_ms() + 10))
    turn_message = await asyncio.wait_for(due_now.get(), 2)
    await turn_message.nack(requeue=True)
    assert [(m.exchange, m.routing_key, m.body, m.priority) for m in broker.sent] == [
        ("internal", "wf", turn_message.body, 1)]
