"""Events for an instance not stored yet are tried again for a while, then refused."""

from __future__ import annotations

import asyncio
import time

from broker import Delivery
from engine._early_events import EarlyEvents


class _Event(Delivery):
    def __init__(self, instance_id: str) -> None:
        self.body, self.headers, self.exchange = b"{}", {}, "events"
        self.routing_key, self.message_id = f"wf.{instance_id}.go", None
        self.redelivered = False
        self.taken_back = False

    @property
    def returned(self) -> bool:
        return self.taken_back

    async def ack(self) -> None: ...
    async def nack(self, *, requeue: bool = True) -> None: ...
    async def dead_letter(self, reason: str) -> None: ...


async def test_an_event_is_tried_again_until_its_grace_has_passed() -> None:
    tried: list[float] = []
    released = asyncio.Event()

    def put(_workflow: str, _delivery: Delivery) -> None:
        tried.append(time.monotonic())
        released.set()

    early = EarlyEvents(put, grace_s=0.5, max_held=10)
    event = _Event("late")
    start = time.monotonic()
    while early.hold("wf", event):  # as the turn loop does each time it finds no instance
        await asyncio.wait_for(released.wait(), timeout=5)
        released.clear()
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 2.0
    # Growing pauses: tried a few times, not once per loop pass.
    assert 3 <= len(tried) <= 6, tried
    assert len(early) == 0


async def test_at_most_max_held_wait_and_a_stop_hands_them_back() -> None:
    early = EarlyEvents(lambda _wf, _d: None, grace_s=10, max_held=2)
    events = [_Event(f"i{n}") for n in range(3)]
    assert [early.hold("wf", e) for e in events] == [True, True, False]
    assert set(early.hand_back()) == set(events[:2])
    assert len(early) == 0


async def test_a_settled_event_starts_afresh() -> None:
    tried: list[Delivery] = []
    early = EarlyEvents(lambda _wf, d: tried.append(d), grace_s=0.2, max_held=5)
    event = _Event("x")
    assert early.hold("wf", event)
    await asyncio.sleep(0.3)  # released, and past its grace
    assert tried == [event]
    early.settled(event)  # e.g. stored: its first sighting is forgotten
    assert early.hold("wf", event)  # a fresh grace, not refused
    assert not EarlyEvents(lambda _wf, _d: None, grace_s=0, max_held=5).hold("wf", event)


async def test_an_event_its_broker_took_back_is_not_tried_again_here() -> None:
    """Its channel closed while it was held: another worker may store it already, and a
    payload without a message id would be stored twice."""
    tried: list[Delivery] = []
    early = EarlyEvents(lambda _wf, d: tried.append(d), grace_s=5, max_held=5)
    gone, kept = _Event("gone"), _Event("kept")
    assert early.hold("wf", gone) and early.hold("wf", kept)
    gone.taken_back = True
    await asyncio.sleep(0.1)  # both released
    assert tried == [kept]
    assert early.hold("wf", kept)
    kept.taken_back = True
    assert early.hand_back() == []  # nothing to return: the broker has it


async def test_what_was_seen_long_ago_and_is_not_held_is_forgotten() -> None:
    early = EarlyEvents(lambda _wf, _d: None, grace_s=0.01, max_held=5)
    lost = _Event("lost")  # tried again, then settled on a path that did not say so
    assert early.hold("wf", lost)
    await asyncio.sleep(1.1)
    early.hold("wf", _Event("next"))
    assert lost not in early._seen
