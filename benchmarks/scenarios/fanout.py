"""``fanout``: one instance running ``asyncio.gather`` of N no-op steps: wall time.

All N steps are decided in one turn and run in parallel; their completions arrive over
many turns, each replaying a run with N pending futures. The figure is create -> complete
as seen by the watcher.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._options import Options
from benchmarks._stats import rate
from benchmarks._warren import ENGINES, warren_target
from benchmarks.scenarios._common import wait_one

WORKFLOW = "bench-fanout"


async def run(engine: str, opts: Options) -> dict[str, Any]:
    n = opts.size(500, 20)
    if engine == "dbos":
        from benchmarks.peers import dbos_peer
        return await dbos_peer.fanout(opts, n)
    if engine not in ENGINES:
        raise ValueError(f"fanout does not support {engine!r}")
    workers = 1 if engine == "warren-embedded" else opts.workers
    async with warren_target(engine, opts.services, opts.log_dir, workers=workers) as target:
        wf = target.client.workflow(WORKFLOW)
        t0 = time.time()
        inst = await wf.create(params={"n": n})
        done, _ = await wait_one(target, WORKFLOW, inst.id, limit_s=60 + n * 0.5,
                                 interval=0.01)
        wall = done - t0
        return {"steps": n, "workers": workers, "wall_s": round(wall, 3),
                "steps_per_s": rate(n, wall)}
