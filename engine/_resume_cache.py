"""Runs kept in memory between turns, so that a continuing instance is not replayed.

Replaying ``run()`` from the stored history on every turn costs a turn O(K) in the number K
of steps already taken: loading K rows, then re-running the code past K recorded outcomes.
Like Temporal's sticky execution, a worker keeps an instance's :class:`InstanceRun` after a
turn that leaves it waiting on steps this worker runs: their results come back to this
worker, whose next turn of the instance then resumes the run instead of replaying it.

A kept run is valid only for the history it committed. It is kept with the fence its
instance's next lease will carry if nobody else leases the instance in between (every lease
increments the fence, and the sweeper increments it when it fails a lost attempt, the one
change to history made outside a turn). A turn that leases the instance at exactly that
fence skips loading its steps and resumes the run; any other fence means it replays.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from engine._replay import InstanceRun

_RUN_WEIGHT = 4
"""What a kept run's own objects (its task, loop, last outcome) weigh, in steps of history:
tracemalloc measured 5.5 KB for a run of one step, and 1.1 KB per step at 1,000 steps."""


@dataclass(frozen=True, slots=True)
class KeptRun:
    """A run kept after a turn, valid if the instance is next leased at ``fence``."""

    pk: int
    fence: int
    run: InstanceRun


class ResumeCache:
    """Kept runs, least recently kept evicted first, weighing at most ``max_steps`` steps of
    history in all, each run counting :data:`_RUN_WEIGHT` steps more (0 keeps nothing)."""

    def __init__(self, max_steps: int) -> None:
        if max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")
        self._max_steps = max_steps
        self._kept: OrderedDict[tuple[str, str], KeptRun] = OrderedDict()
        self._steps = 0

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, workflow: str, instance_ids: Iterable[str]) -> dict[int, KeptRun]:
        """Remove and return the runs kept for these instances, by instance pk.

        Taken before the lease is, so no other turn task of this worker can evict or
        replace them meanwhile; a run not resumed is simply dropped.
        """
        taken: dict[int, KeptRun] = {}
        for instance_id in instance_ids:
            kept = self._kept.pop((workflow, instance_id), None)
            if kept is not None:
                self._steps -= _weight(kept)
                taken[kept.pk] = kept
        return taken

    def keep(self, workflow: str, instance_id: str, kept: KeptRun) -> None:
        """Keep a run after the turn that committed its history."""
        weight = _weight(kept)
        if weight > self._max_steps:
            return
        old = self._kept.pop((workflow, instance_id), None)
        if old is not None:
            self._steps -= _weight(old)
        self._kept[(workflow, instance_id)] = kept
        self._steps += weight
        while self._steps > self._max_steps:
            _, evicted = self._kept.popitem(last=False)
            self._steps -= _weight(evicted)


def _weight(kept: KeptRun) -> int:
    return kept.run.history_size + _RUN_WEIGHT
