"""``latency``: one instance at a time, create -> complete and create -> first step start.

The clock starts just before ``create()``; the first step's body returns ``time.time()``
so its start is recorded by the step itself; completion is the first poll (every
``--poll-ms``, 2 ms by default, the same for every engine) that sees the instance done.
A few warm-up instances (connections, caches) are run first and not counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._options import Options
from benchmarks._stats import distribution
from benchmarks._warren import ENGINES, warren_target
from benchmarks.scenarios._common import wait_one

WORKFLOW = "bench-timed3"
WARMUP = 5


def warmup(opts: Options) -> int:
    """Uncounted instances run first (connections, caches); one is enough for a smoke run."""
    return 1 if opts.smoke else WARMUP


async def run(engine: str, opts: Options) -> dict[str, Any]:
    n = opts.size(200, 5)
    if engine in ENGINES:
        return await _warren(engine, opts, n)
    if engine == "dbos":
        from benchmarks.peers import dbos_peer
        return await dbos_peer.latency(opts, n)
    if engine == "celery":
        from benchmarks.peers import celery_peer
        return await celery_peer.latency(opts, n)
    raise ValueError(f"latency does not support {engine!r}")


async def _warren(engine: str, opts: Options, n: int) -> dict[str, Any]:
    workers = 1 if engine == "warren-embedded" else opts.workers
    async with warren_target(engine, opts.services, opts.log_dir, workers=workers) as target:
        wf = target.client.workflow(WORKFLOW)

        async def once() -> Timing:
            t0 = time.time()
            inst = await wf.create()
            accepted = time.time()
            done, output = await wait_one(target, WORKFLOW, inst.id, limit_s=30,
                                          interval=opts.poll_s)
            return t0, accepted, done, output

        return await latency_loop(n, warmup(opts), workers, once)


Timing = tuple[float, float, float, list[float]]
"""One instance: (start, create accepted, seen complete, the steps' start times)."""


async def latency_loop(
    n: int, skip: int, workers: int, once: Callable[[], Awaitable[Timing]]
) -> dict[str, Any]:
    """Run ``once`` ``skip + n`` times, one after another; report the last ``n``."""
    complete: list[float] = []
    first_step: list[float] = []
    create_call: list[float] = []
    for i in range(skip + n):
        t0, accepted, done, times = await once()
        if i < skip:
            continue
        complete.append(done - t0)
        first_step.append(float(times[0]) - t0)
        create_call.append(accepted - t0)
    return latency_result(n, workers, complete, first_step, create_call)


def latency_result(n: int, workers: int, complete: list[float], first_step: list[float],
                   create_call: list[float]) -> dict[str, Any]:
    """The latency JSON shape every engine reports."""
    return {
        "instances": n, "workers": workers,
        "create_to_complete_ms": distribution(complete),
        "create_to_first_step_ms": distribution(first_step),
        "create_call_ms": distribution(create_call),
    }
