"""A worker's prefetched deliveries, handed to its turn tasks as batches.

Turn messages (wake-ups, commands, step hand-offs) are taken first. New work (creates and
events) is taken by one task at a time, so that under a flood of creates the other tasks are
always free for a wake-up: a batch is not preemptible, and without free tasks a due wake-up
would wait for whole batches of creates to finish.

One lane, not several: new work is batched, and while its batch is in flight the next one
gathers whatever arrives, as the client's group commit does (``engine._create_group``). A
second lane only split what was waiting into smaller batches that compete for the CPU with
the steps and turns of the instances already started: four workers on 2 cores ran 6 %
fewer steps/s with two lanes each (backlog ``scale-out``, 6 alternating rounds, medians
2,876 against 3,062), and as many with two workers (paired median 0.996).

Free tasks are not enough while timers are about to fall due: the worker is one thread,
and a batch of 100 creates holds it for tens of milliseconds of Python at a time (hundreds
of wall-clock milliseconds on a saturated machine), during which a due wake-up can neither
fire nor run. So while the worker holds wake-ups that fall due within the next second, new
work is taken in short batches (20,000 sleepers created in a flood, ``python -m benchmarks
sleepers``: lateness p99 918 ms with batches of 100 against 224 ms with batches of 5, at
the same creation rate). Without timers nearby, batches stay long: they are what makes a
burst of creates cheap (throughput fell 30 % with batches of 5 throughout).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from broker import Delivery

Item = tuple[str, Delivery]  # (workflow, delivery)
SHORT_BATCH_DIVISOR = 20
"""New work is taken in batches of ``batch_size // 20`` (5 by default) while timers are due
soon."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A batch of deliveries taken from the intake; give it back with :meth:`Intake.done`."""

    items: list[Item]
    new_work: bool


class Intake:
    """Prefetched deliveries: turn messages first, new work one batch at a time."""

    def __init__(
        self, *, batch_size: int, timers_due_soon: Callable[[], bool] = lambda: False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._batch_size = batch_size
        self._short_batch = max(1, batch_size // SHORT_BATCH_DIVISOR)
        self._timers_due_soon = timers_due_soon
        self._turn_messages: deque[Item] = deque()
        self._new_work: deque[Item] = deque()
        self._new_work_taken = False
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._turn_messages) + len(self._new_work)

    def put(self, workflow: str, delivery: Delivery) -> None:
        waiting = self._turn_messages if delivery.exchange == "internal" else self._new_work
        waiting.append((workflow, delivery))
        self._changed.set()

    async def take(self) -> Taken:
        """The next batch: up to ``batch_size`` turn messages, else new work if no batch of
        it is out."""
        while True:
            if self._turn_messages:
                return Taken(self._pop(self._turn_messages, self._batch_size), new_work=False)
            if self._new_work and not self._new_work_taken:
                self._new_work_taken = True
                size = self._short_batch if self._timers_due_soon() else self._batch_size
                return Taken(self._pop(self._new_work, size), new_work=True)
            self._changed.clear()
            await self._changed.wait()

    def done(self, taken: Taken) -> None:
        """The batch is processed: if it was new work, the next batch of it may be taken."""
        if taken.new_work:
            self._new_work_taken = False
            self._changed.set()

    @staticmethod
    def _pop(waiting: deque[Item], size: int) -> list[Item]:
        return [waiting.popleft() for _ in range(min(size, len(waiting)))]
