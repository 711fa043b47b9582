"""``delay``: real instances that ``step.sleep`` a random duration, then run one step.

lateness = the step's start (``time.time()`` in its body) - (the sleep's start + its
duration), where the sleep's start is the engine's clock at the turn that decided it (the
``started_at_ms`` of the sleep step). It includes everything a user waits for after the
timer is due: the delayed message, the turn, the step dispatch. ``early`` counts steps
that started before their sleep was over and must be 0.

On RabbitMQ the broker-level measurement of :mod:`benchmarks.delay_lateness` (raw delayed
messages, no engine) runs too, on the same vhost, so the engine's share of the lateness is
visible next to the broker's.
"""

from __future__ import annotations

import random
import time
from typing import Any

from benchmarks import delay_lateness
from benchmarks._options import Options
from benchmarks._probe import sleep_records
from benchmarks._stats import distribution, rate
from benchmarks._warren import ENGINES, WarrenTarget, warren_target
from benchmarks.scenarios._common import create_batched, wait_complete

WORKFLOW = "bench-sleep"


async def run(engine: str, opts: Options) -> dict[str, Any]:
    if engine not in ENGINES:
        raise ValueError(f"delay does not support {engine!r}")
    n = opts.size(10_000, 50)
    workers = 1 if engine == "warren-embedded" else opts.workers
    max_ms = int(opts.max_delay_s * 1000)
    async with warren_target(engine, opts.services, opts.log_dir, workers=workers) as target:
        result = await sleepers_lateness(target, n, 1, max_ms)
        result["workers"] = workers
        if engine == "warren":
            result["broker_level"] = await delay_lateness.run(
                n, max_ms, target.env["WARREN_BROKER_URL"], batch=200, seed=1)
        return result


async def sleepers_lateness(target: WarrenTarget, n: int, min_ms: int, max_ms: int
                            ) -> dict[str, Any]:
    """Create ``n`` sleepers (uniform ``min_ms..max_ms``), wait for all, measure lateness."""
    rng = random.Random(7)
    params = [{"delay_ms": rng.randint(min_ms, max_ms)} for _ in range(n)]
    t0 = time.time()
    await create_batched(target, WORKFLOW, params)
    created_s = time.time() - t0
    await wait_complete(target, WORKFLOW, n, limit_s=max_ms / 1000 + 120 + n * 0.05,
                        interval=0.2)
    return {"instances": n, "max_delay_s": max_ms / 1000,
            "create_per_s": rate(n, created_s), **await lateness(target)}


async def lateness(target: WarrenTarget) -> dict[str, Any]:
    """Lateness distribution and early count over the complete sleepers."""
    late: list[float] = []
    for params, sleep_start_ms, woke in await sleep_records(target.probe, WORKFLOW):
        due = (sleep_start_ms + params["delay_ms"]) / 1000
        late.append(float(woke) - due)
    return {"lateness_ms": distribution(late), "early": sum(1 for x in late if x < 0)}
