"""``scale-out``: ``throughput`` with 1, 2 and 4 worker processes, each on a fresh deployment.

On 2 cores the curve is expected to flatten (the workers share the cores with PostgreSQL
and RabbitMQ), but it must not fall: adding a worker may not cost throughput through lease
contention or duplicate work. The target is 2 workers >= 1.3x 1 worker.

The peers run the same curve with their own ``throughput`` (DBOS: that many queue worker
processes; Celery: that many prefork pool processes), so that how far a curve can rise on
this machine is measured beside Warren's, not assumed. Only Warren also measures the
backlog curve.

Both verdicts are drawn from the median curve of the invocation's runs (see ``derive``), as
every figure the benchmarks report is a median. A single run takes 2-3 s, and the same code
measured twice varied by up to 10 % (4 workers against 2, backlog, alternating: 0.89x to
1.10x in six pairs), so a verdict on every single run would judge the noise.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from benchmarks._options import Options
from benchmarks.scenarios import PEERS
from benchmarks.scenarios.throughput import peer_throughput, warren_throughput


async def run(engine: str, opts: Options) -> dict[str, Any]:
    n = opts.size(2000, 30)
    if engine in PEERS:
        return await _peer_curve(engine, opts, n)
    if engine != "warren":
        raise ValueError("scale-out runs on the RabbitMQ + PostgreSQL engine and the peers")
    curve: dict[str, float] = {}
    create_phase_s: dict[str, float] = {}
    backlog: dict[str, float] = {}
    machine: dict[str, Any] = {}
    backlog_machine: dict[str, Any] = {}
    for count in _order(opts):
        result = await warren_throughput(engine, opts, n, count, with_creation=False)
        curve[str(count)] = result["steps_per_s"]
        create_phase_s[str(count)] = result["create_phase_s"]
        machine[str(count)] = result["machine"]
        result = await warren_throughput(engine, opts, n, count, with_creation=False,
                                         backlog=True)
        backlog[str(count)] = result["steps_per_s"]
        backlog_machine[str(count)] = result["machine"]

    return {
        "instances": n, "curve": _in_worker_order(opts, curve),
        "create_phase_s": _in_worker_order(opts, create_phase_s),
        # How busy the machine was at each worker count, and who used the cores: a second
        # worker can add at most what one leaves idle.
        "machine": _in_worker_order(opts, machine),
        # The same instances created before the workers start, which then start on them
        # together: the benchmark's client takes no CPU from them while they run (with 4
        # workers on 2 cores it gets a smaller share of the CPU, and the creation, not the
        # workers, bounds the curve above).
        "backlog": {"curve": _in_worker_order(opts, backlog),
                    "machine": _in_worker_order(opts, backlog_machine)},
    }


async def _peer_curve(engine: str, opts: Options, n: int) -> dict[str, Any]:
    """A peer's ``throughput`` at each worker count, each on a fresh deployment."""
    curve: dict[str, float] = {}
    create_phase_s: dict[str, float] = {}
    machine: dict[str, Any] = {}
    for count in _order(opts):
        result = await peer_throughput(engine, peer_options(engine, opts, count), n)
        curve[str(count)] = result["steps_per_s"]
        create_phase_s[str(count)] = result["create_phase_s"]
        machine[str(count)] = result["machine"]
    return {"instances": n, "curve": _in_worker_order(opts, curve),
            "create_phase_s": _in_worker_order(opts, create_phase_s),
            "machine": _in_worker_order(opts, machine)}


def peer_options(engine: str, opts: Options, workers: int) -> Options:
    """``opts`` for a peer's run with ``workers`` worker processes: DBOS queue workers
    (its worker processes exist only in queue mode), Celery prefork pool processes."""
    if engine == "dbos":
        if opts.dbos_mode == "inprocess":
            raise ValueError("scale-out runs DBOS's queue worker processes "
                             "(--dbos-mode queue or auto)")
        return replace(opts, workers=workers, dbos_mode="queue")
    if engine == "celery":
        return replace(opts, celery_concurrency=workers)
    raise ValueError(f"scale-out has no peer {engine!r}")


def _order(opts: Options) -> tuple[int, ...]:
    """Every other run goes from the most workers to the fewest, so that a drift in the
    machine's speed during the invocation hits no worker count alone (the CLI interleaves
    engines for the same reason)."""
    return opts.worker_counts if opts.run_index % 2 == 0 else opts.worker_counts[::-1]


def _in_worker_order(opts: Options, points: dict[str, Any]) -> dict[str, Any]:
    return {str(c): points[str(c)] for c in opts.worker_counts}


def derive(median: dict[str, Any]) -> dict[str, Any]:
    """The median curves with their verdicts: the speedup from 1 to 2 workers, and whether
    the curve never falls (each point at least 95 % of the one before: the allowance for
    what noise the medians keep)."""
    derived = {**median, **_verdicts(median["curve"])}
    if "backlog" in median:  # Warren's only
        derived["backlog"] = {**median["backlog"], **_verdicts(median["backlog"]["curve"])}
    return derived


def _verdicts(curve: dict[str, float]) -> dict[str, Any]:
    points = [curve[k] for k in sorted(curve, key=int)]
    base, two = curve.get("1"), curve.get("2")
    return {
        "speedup_2_over_1": round(two / base, 3) if base and two else None,
        "never_falls": all(b >= a * 0.95 for a, b in itertools.pairwise(points)),
    }
