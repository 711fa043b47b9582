"""The Warren workflows the scenarios run (served by ``warren worker benchmarks.workflows``).

Step bodies are async and trivial on purpose: the benchmarks measure the engine's cost per
step (turns, SQL, messages, replay), not user work. Timing steps return ``time.time()`` so
the moment a body ran is recorded in the step's output, by the engine itself, without any
side channel that could slow the worker down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep


async def _noop() -> None:
    return None


async def _now() -> float:
    return time.time()


class Noop3(WorkflowEntrypoint):
    """Three sequential no-op steps (``throughput``, ``scale-out``)."""

    name = "bench-noop3"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("s1", _noop)
        await step.do("s2", _noop)
        await step.do("s3", _noop)
        return None


class Timed3(WorkflowEntrypoint):
    """Three sequential steps, each returning when its body started (``latency``)."""

    name = "bench-timed3"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        a = await step.do("s1", _now)
        b = await step.do("s2", _now)
        c = await step.do("s3", _now)
        return [a, b, c]


class SleepThenStep(WorkflowEntrypoint):
    """``step.sleep`` for ``params["delay_ms"]``, then one step recording the wake time
    (``delay``, ``sleepers``)."""

    name = "bench-sleep"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", event.payload["delay_ms"] / 1000)
        return await step.do("woke", _now)


class Parked(SleepThenStep):
    """The same as ``bench-sleep``, under its own name so that instances parked on a long
    sleep (``sleepers``' memory phase) are not counted with the ones being timed."""

    name = "bench-park"


class Fanout(WorkflowEntrypoint):
    """``asyncio.gather`` of ``params["n"]`` no-op steps (``fanout``)."""

    name = "bench-fanout"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        n = int(event.payload["n"])
        await asyncio.gather(*(step.do(f"f{i}", _noop) for i in range(n)))
        return n


class LongHistory(WorkflowEntrypoint):
    """``params["k"]`` sequential steps of one name (``long-history``): every turn replays
    a history one step longer than the last."""

    name = "bench-long"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        last = 0.0
        for _ in range(int(event.payload["k"])):
            last = await step.do("s", _now)
        return last


class WaitForEvent(WorkflowEntrypoint):
    """Waits for a ``go`` event, then one step recording when it ran (``events``)."""

    name = "bench-event"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.wait_for_event("x", "go", timeout="1 hour")
        return await step.do("after", _now)


class AdmissionNoop(WorkflowEntrypoint):
    """One no-op step under a concurrency limit (``admission``). The scenario's workers
    override the limit with ``WARREN_WORKFLOW_MAX_CONCURRENCY`` (``--max-concurrency``)."""

    name = "bench-admit"
    max_concurrency = 100

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.do("s1", _noop)
        return None
