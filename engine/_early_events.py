"""Events that arrive before their instance is stored, held a while before they are refused.

A publisher may send an instance's create and then, at once, an event for it. With more
than one worker the two can be delivered to different workers, and the event's worker may
look for the instance while the create still waits in another worker's prefetch window:
refused at once, the event would be dead-lettered although its instance exists a moment
later. So an event for an unknown instance is held, unacknowledged (the broker still keeps
it, and gives it to another worker if this one dies), and tried again after a growing pause,
until ``grace_s`` has passed since it was first seen; then it is refused as before.

At most ``max_held`` are held at once (the worker holds half its prefetch window at most):
each held event takes a place in the window, and a flood of events for instances that never
exist must not stall the rest. Past that, an event for an unknown instance is refused at
once, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker import Delivery

_FIRST_PAUSE_S = 0.05
_LONGEST_PAUSE_S = 2.0


class EarlyEvents:
    """Events whose instance was not found, each waiting to be tried again."""

    def __init__(self, put: Callable[[str, Delivery], None], *, grace_s: float,
                 max_held: int) -> None:
        if grace_s < 0 or max_held < 0:
            raise ValueError("grace_s and max_held must be >= 0")
        self._put = put
        self._grace_s = grace_s
        self._max_held = max_held
        # Every event seen for an unknown instance and not yet settled: when first seen and
        # how long it paused last; and the timers of those paused now.
        self._seen: dict[Delivery, tuple[float, float]] = {}
        self._held: dict[Delivery, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, workflow: str, delivery: Delivery) -> bool:
        """Hold ``delivery`` to try it again later; False if it has waited long enough (or
        too many are held), and the caller refuses it."""
        now = time.monotonic()
        self._forget_stale(now)
        first_seen, pause = self._seen.get(delivery, (now, _FIRST_PAUSE_S / 2))
        if now - first_seen >= self._grace_s or len(self._held) >= self._max_held:
            self._seen.pop(delivery, None)
            return False
        pause = min(pause * 2, _LONGEST_PAUSE_S, max(0.0, first_seen + self._grace_s - now))
        self._seen[delivery] = (first_seen, pause)
        self._held[delivery] = asyncio.get_running_loop().call_later(
            pause, self._release, workflow, delivery)
        return True

    def settled(self, delivery: Delivery) -> None:
        """``delivery`` was stored or refused: forget when it was first seen."""
        self._seen.pop(delivery, None)

    def _release(self, workflow: str, delivery: Delivery) -> None:
        del self._held[delivery]
        if delivery.returned:
            # Its channel closed meanwhile: the broker has it back, and another worker may
            # store it already. Tried here too, a payload without a message id would be
            # stored twice.
            self._seen.pop(delivery, None)
            return
        self._put(workflow, delivery)

    def _forget_stale(self, now: float) -> None:
        """Forget events first seen long ago and not held now: tried again, they were
        settled on a path that does not say so (a failed batch requeues them, say)."""
        stale = [d for d, (first_seen, _) in self._seen.items()
                 if d not in self._held and now - first_seen > 2 * self._grace_s + 1]
        for delivery in stale:
            del self._seen[delivery]

    def hand_back(self) -> list[Delivery]:
        """Stop holding: the held events the broker has not taken back already, for the
        caller to return to it."""
        for handle in self._held.values():
            handle.cancel()
        held = [d for d in self._held if not d.returned]
        self._held.clear()
        self._seen.clear()
        return held
