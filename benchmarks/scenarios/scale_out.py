"""``scale-out``: ``throughput`` with 1, 2 and 4 worker processes, each on a fresh deployment.

On 2 cores the curve is expected to flatten (the workers share the cores with PostgreSQL
and RabbitMQ), but it must not fall: adding a worker may not cost throughput through lease
contention or duplicate work. The target is 2 workers >= 1.3x 1 worker.

Both verdicts are drawn from the median curve of the invocation's runs (see ``derive``), as
every figure the benchmarks report is a median. A single run takes 2-3 s, and the same code
measured twice varied by up to 10 % (4 workers against 2, backlog, alternating: 0.89x to
1.10x in six pairs), so a verdict on every single run would judge the noise.
"""

from __future__ import annotations

import itertools
from typing import Any

from benchmarks._options import Options
from benchmarks.scenarios.throughput import warren_throughput


async def run(engine: str, opts: Options) -> dict[str, Any]:
    if engine != "warren":
        raise ValueError("scale-out runs on the RabbitMQ + PostgreSQL engine only")
    n = opts.size(2000, 30)
    curve: dict[str, float] = {}
    create_phase_s: dict[str, float] = {}
    backlog: dict[str, float] = {}
    machine: dict[str, Any] = {}
    backlog_machine: dict[str, Any] = {}
    # Every other run goes from the most workers to the fewest, so that a drift in the
    # machine's speed during the invocation hits no worker count alone (the CLI
    # interleaves engines for the same reason).
    order = opts.worker_counts if opts.run_index % 2 == 0 else opts.worker_counts[::-1]
    for count in order:
        result = await warren_throughput(engine, opts, n, count, with_creation=False)
        curve[str(count)] = result["steps_per_s"]
        create_phase_s[str(count)] = result["create_phase_s"]
        machine[str(count)] = result["machine"]
        result = await warren_throughput(engine, opts, n, count, with_creation=False,
                                         backlog=True)
        backlog[str(count)] = result["steps_per_s"]
        backlog_machine[str(count)] = result["machine"]

    def in_worker_order(points: dict[str, Any]) -> dict[str, Any]:
        return {str(c): points[str(c)] for c in opts.worker_counts}

    return {
        "instances": n, "curve": in_worker_order(curve),
        "create_phase_s": in_worker_order(create_phase_s),
        # How busy the machine was at each worker count, and who used the cores: a second
        # worker can add at most what one leaves idle.
        "machine": in_worker_order(machine),
        # The same instances created before the workers start, which then start on them
        # together: the benchmark's client takes no CPU from them while they run (with 4
        # workers on 2 cores it gets a smaller share of the CPU, and the creation, not the
        # workers, bounds the curve above).
        "backlog": {"curve": in_worker_order(backlog),
                    "machine": in_worker_order(backlog_machine)},
    }


def derive(median: dict[str, Any]) -> dict[str, Any]:
    """The median curves with their verdicts: the speedup from 1 to 2 workers, and whether
    the curve never falls (each point at least 95 % of the one before: the allowance for
    what noise the medians keep)."""
    return {**median, **_verdicts(median["curve"]),
            "backlog": {**median["backlog"], **_verdicts(median["backlog"]["curve"])}}


def _verdicts(curve: dict[str, float]) -> dict[str, Any]:
    points = [curve[k] for k in sorted(curve, key=int)]
    base, two = curve.get("1"), curve.get("2")
    return {
        "speedup_2_over_1": round(two / base, 3) if base and two else None,
        "never_falls": all(b >= a * 0.95 for a, b in itertools.pairwise(points)),
    }
