"""Prefetched deliveries: turn messages first, and new work one batch at a time."""

from __future__ import annotations

import asyncio

import pytest

from broker import Delivery, Envelope, Exchange
from engine._intake import SHORT_BATCH_DIVISOR, Intake


class _Delivery(Delivery):
    def __init__(self, exchange: Exchange, body: bytes) -> None:
        self.body, self.headers, self.exchange = body, {}, exchange
        self.routing_key, self.message_id, self.redelivered = "wf", None, False

    async def ack(self) -> None: ...
    async def nack(self, *, requeue: bool = True) -> None: ...
    async def dead_letter(self, reason: str) -> None: ...


def _creates(n: int) -> list[Delivery]:
    return [_Delivery("create", b'{"id": "c%d"}' % i) for i in range(n)]


def _wake(instance_id: str) -> Delivery:
    return _Delivery("internal", Envelope("wake", instance_id).encode())


async def test_a_wake_up_prefetched_behind_creates_is_taken_first() -> None:
    intake = Intake(batch_size=10)
    creates, wake = _creates(5), _wake("sleeper")
    for d in [*creates[:3], wake, *creates[3:]]:
        intake.put("wf", d)
    first = await intake.take()
    assert [d for _, d in first.items] == [wake] and not first.new_work
    second = await intake.take()
    assert [d for _, d in second.items] == creates and second.new_work  # in arrival order
    assert len(intake) == 0


async def test_new_work_is_out_one_batch_at_a_time_so_a_wake_up_never_waits_for_one() -> None:
    intake = Intake(batch_size=2)
    for d in _creates(10):
        intake.put("wf", d)
    first = await intake.take()
    assert first.new_work and len(first.items) == 2
    # A batch of creates is out: a second task gets no creates, and takes the wake-up at once.
    second = asyncio.create_task(intake.take())
    await asyncio.sleep(0)
    assert not second.done()
    wake = _wake("sleeper")
    intake.put("wf", wake)
    taken = await asyncio.wait_for(second, 1)
    assert [d for _, d in taken.items] == [wake]
    # Only when that batch is done does the next one go out.
    third = asyncio.create_task(intake.take())
    await asyncio.sleep(0)
    assert not third.done()
    intake.done(taken)  # a batch of turn messages frees nothing
    await asyncio.sleep(0)
    assert not third.done()
    intake.done(first)
    assert (await asyncio.wait_for(third, 1)).new_work


def test_an_intake_needs_a_batch_size() -> None:
    with pytest.raises(ValueError):
        Intake(batch_size=0)


async def test_new_work_comes_in_short_batches_only_while_timers_are_due_soon() -> None:
    timers_held = False
    intake = Intake(batch_size=100, timers_due_soon=lambda: timers_held)
    for d in _creates(300):
        intake.put("wf", d)
    long = await intake.take()
    assert len(long.items) == 100
    intake.done(long)
    timers_held = True  # a wake-up is held: a long batch could make it late
    short = await intake.take()
    assert len(short.items) == 100 // SHORT_BATCH_DIVISOR
    intake.done(short)
    timers_held = False
    assert len((await intake.take()).items) == 100
