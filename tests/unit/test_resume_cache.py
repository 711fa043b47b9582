"""The bound and the hand-over rules of the runs a worker keeps between turns."""

from __future__ import annotations

from typing import Any

import pytest

from engine import _history as h
from engine._replay import InstanceRun
from engine._resume_cache import KeptRun, ResumeCache
from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep


class Anything(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return None


def _kept(pk: int, steps: int) -> KeptRun:
    records = [h.StepRecord(key=f"s#{i}", name="s", count=i, kind=h.DO, start_seq=i,
                            state=h.SUCCEEDED, config={}, started_at_ms=0, completed_seq=i)
               for i in range(1, steps + 1)]
    snapshot = h.InstanceSnapshot(pk=pk, workflow="w", instance_id=f"i{pk}", params=None,
                                  status=h.STATUS_RUNNING, created_at_ms=0, fence=1,
                                  steps=records)
    return KeptRun(pk, 2, InstanceRun(Anything, snapshot, 0))


def test_a_taken_run_is_gone_and_keyed_by_instance_pk() -> None:
    cache = ResumeCache(max_steps=100)
    cache.keep("w", "i1", _kept(1, 3))
    cache.keep("w", "i2", _kept(2, 3))
    taken = cache.take("w", ["i1", "unknown"])
    assert list(taken) == [1] and taken[1].fence == 2
    assert cache.take("w", ["i1"]) == {}  # one turn at a time resumes a run
    assert len(cache) == 1
    assert cache.take("other-workflow", ["i2"]) == {}


def test_the_least_recently_kept_runs_go_first_once_over_the_step_bound() -> None:
    cache = ResumeCache(max_steps=20)  # a run weighs 4 steps more than its history
    for pk in (1, 2, 3):
        cache.keep("w", f"i{pk}", _kept(pk, 4))  # 3 x 8 > 20: the first one goes
    assert set(cache.take("w", ["i1", "i2", "i3"])) == {2, 3}
    cache.keep("w", "big", _kept(9, 17))  # heavier than the whole bound: not kept at all
    assert len(cache) == 0


def test_keeping_an_instance_again_replaces_its_run() -> None:
    cache = ResumeCache(max_steps=20)
    cache.keep("w", "i1", _kept(1, 6))
    cache.keep("w", "i1", _kept(1, 6))  # counted once: no eviction of itself
    assert len(cache) == 1


def test_a_zero_bound_keeps_nothing_and_a_negative_one_is_an_error() -> None:
    cache = ResumeCache(max_steps=0)
    cache.keep("w", "i1", _kept(1, 0))
    cache.keep("w", "i2", _kept(2, 1))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_steps"):
        ResumeCache(max_steps=-1)
