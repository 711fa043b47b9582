"""``long-history``: one instance with K sequential steps, for each K: time per step.

A replaying engine re-executes ``run()`` from the top on every turn, so a naive one pays
O(K) per step and O(K^2) per instance; the target is that per-step time at K=1,000 stays
within 1.5x of K=10. ``ratio`` is per-step(max K) / per-step(min K).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._options import Options
from benchmarks._warren import ENGINES, warren_target
from benchmarks.scenarios._common import wait_one

WORKFLOW = "bench-long"


async def run(engine: str, opts: Options) -> dict[str, Any]:
    ks = (opts.n,) if opts.n is not None else opts.ks
    if engine == "dbos":
        from benchmarks.peers import dbos_peer
        return await dbos_peer.long_history(opts, ks)
    if engine not in ENGINES:
        raise ValueError(f"long-history does not support {engine!r}")
    workers = 1 if engine == "warren-embedded" else opts.workers
    per_step: dict[str, float] = {}
    async with warren_target(engine, opts.services, opts.log_dir, workers=workers) as target:
        wf = target.client.workflow(WORKFLOW)
        for k in ks:
            t0 = time.time()
            inst = await wf.create(params={"k": k})
            done, _ = await wait_one(target, WORKFLOW, inst.id, limit_s=120 + k * 1.0,
                                     interval=0.005)
            per_step[str(k)] = round((done - t0) / k * 1000, 3)
    low, high = per_step[str(min(ks))], per_step[str(max(ks))]
    return {"ks": list(ks), "workers": workers, "per_step_ms": per_step,
            "ratio": round(high / low, 3) if low else 0.0}
