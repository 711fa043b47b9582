"""The replay loop is the running loop only for workflow code, never for the world's."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from engine._replay_loop import ReplayLoop


@pytest.fixture
def collect_often() -> Iterator[None]:
    """A cyclic collection at nearly every allocation, as can happen at any moment."""
    thresholds = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


class _Finalized:
    """Garbage in a reference cycle whose finalizer notes the loop it runs under, as a
    pooled database connection's finalizer does when it schedules its close."""

    seen: list[Any] = []

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        _Finalized.seen.append(asyncio._get_running_loop())


async def test_finalizers_never_run_under_the_replay_loop(collect_often: None) -> None:
    """A finalizer that ran while workflow code replays would bind its futures to the
    replay loop, which has no I/O: an aiosqlite thread answering one died of it."""
    _Finalized.seen.clear()
    loop = ReplayLoop()

    async def workflow_code() -> None:
        for _ in range(200):
            _Finalized()  # unreachable at once: only the cyclic collector frees it
            await asyncio.sleep(0)

    task = loop.create_task(workflow_code())
    loop.run_until_idle()
    assert task.done()
    assert gc.isenabled(), "the collector is back on after the replay"
    gc.collect()
    assert _Finalized.seen, "the finalizers ran"
    assert not any(isinstance(seen, ReplayLoop) for seen in _Finalized.seen)
    _Finalized.seen.clear()


def test_the_collector_is_back_on_when_workflow_code_raises_through() -> None:
    loop = ReplayLoop()

    def interrupted() -> None:
        raise KeyboardInterrupt

    loop.call_soon(interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_idle()
    assert gc.isenabled()
