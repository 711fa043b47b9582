"""Deliveries a worker has prefetched are taken turn messages first."""

from __future__ import annotations

from typing import Any, cast

from broker import Delivery, Envelope, Exchange
from engine._turn_loop import TurnLoop


class _Delivery(Delivery):
    def __init__(self, exchange: Exchange, body: bytes) -> None:
        self.body, self.headers, self.exchange = body, {}, exchange
        self.routing_key, self.message_id, self.redelivered = "wf", None, False

    async def ack(self) -> None: ...
    async def nack(self, *, requeue: bool = True) -> None: ...
    async def dead_letter(self, reason: str) -> None: ...


async def test_a_wake_up_prefetched_behind_creates_is_taken_first() -> None:
    none = cast(Any, None)
    loop = TurnLoop(none, none, none, {}, worker_id="w", batch_size=10, lease_ms=1000,
                    parallelism=1)
    on_delivery = loop.handler("wf")
    creates = [_Delivery("create", b'{"id": "c%d"}' % i) for i in range(5)]
    wake = _Delivery("internal", Envelope("wake", "sleeper").encode())
    for d in [*creates[:3], wake, *creates[3:]]:
        await on_delivery(d)
    taken = [loop._queue.get_nowait()[3] for _ in range(6)]
    assert taken == [wake, *creates]  # the wake-up first, then the creates in arrival order
