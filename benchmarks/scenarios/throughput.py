"""``throughput``: N instances x 3 no-op steps, from the first create to the last completion.

Workers are started (and ready) before the clock starts, so their start-up is not counted;
instances are created with ``create_batch`` while the workers already run, as in a real
burst. The end is the engine's own ``ended_at_ms`` of the last instance, so the watcher's
poll interval does not blur it. Creation rates are measured first, separately, on a workflow
no worker serves: they are what the client and store accept durably, not what the workers
can keep up with.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks._load import CpuWindow
from benchmarks._options import Options
from benchmarks._probe import (
    PgProbe,
    activity_per_step,
    pg_activity,
    span_ms,
    wait_for_no_other_connection,
)
from benchmarks._stats import rate
from benchmarks._warren import ENGINES, WarrenTarget, warren_target
from benchmarks.scenarios._common import create_batched, wait_complete

WORKFLOW = "bench-noop3"
CREATE_ONLY = "bench-create"  # no worker serves it: creation is measured alone
STEPS = 3
SINGLE_CONCURRENCY = 32


async def run(engine: str, opts: Options) -> dict[str, Any]:
    n = opts.size(2000, 30)
    if engine in ENGINES:
        workers = 1 if engine == "warren-embedded" else opts.workers
        return await warren_throughput(engine, opts, n, workers, with_creation=True)
    return await peer_throughput(engine, opts, n)


async def peer_throughput(engine: str, opts: Options, n: int) -> dict[str, Any]:
    """One throughput run of a peer (its worker processes as ``opts`` says)."""
    # Imported here: the peers' packages are an optional extra.
    if engine == "dbos":
        from benchmarks.peers import dbos_peer
        return await dbos_peer.throughput(opts, n)
    if engine == "celery":
        from benchmarks.peers import celery_peer
        return await celery_peer.throughput(opts, n)
    raise ValueError(f"throughput does not support {engine!r}")


async def warren_throughput(engine: str, opts: Options, n: int, workers: int,
                            *, with_creation: bool, backlog: bool = False) -> dict[str, Any]:
    """One throughput run on a fresh deployment with ``workers`` worker processes.

    With ``backlog`` the instances are all created before the workers start, and the run
    is timed from the moment they all start together: the client then takes no CPU from
    the workers while they run.
    """
    async with warren_target(engine, opts.services, opts.log_dir) as target:
        creation = await creation_rates(target, opts) if with_creation else None
        if creation is not None:
            await _publish_client_counters(target, reopen=True)
        if not backlog:
            await target.start_workers(workers)
        cpu_before = target.worker_cpu_seconds()
        sql_before = await _sql(target)
        window = CpuWindow(target.worker_cpu_seconds)
        t0 = time.time()
        await create_batched(target, WORKFLOW, [None] * n)
        created_s = time.time() - t0
        if backlog:
            t0 = await _start_together(target, workers)
            cpu_before = target.worker_cpu_seconds()
            window = CpuWindow(target.worker_cpu_seconds)
        await wait_complete(target, WORKFLOW, n, limit_s=120 + n * 0.2,
                            interval=0.05)
        machine = window.stop()
        _, last_ms = await span_ms(target.probe, WORKFLOW)
        elapsed = last_ms / 1000 - t0
        cpu_s = target.worker_cpu_seconds() - cpu_before
        rss = target.worker_rss_bytes()
        await target.stop_workers()  # makes PostgreSQL publish their final counters
        await _publish_client_counters(target, reopen=False)
        sql_after = await _sql(target)
        result: dict[str, Any] = {
            "instances": n, "steps": n * STEPS, "workers": workers,
            "elapsed_s": round(elapsed, 3),
            "instances_per_s": rate(n, elapsed), "steps_per_s": rate(n * STEPS, elapsed),
            "create_phase_s": round(created_s, 3),
            "worker_cpu_s": round(cpu_s, 2),
            "worker_cpu_ms_per_step": round(cpu_s / (n * STEPS) * 1000, 3),
            "worker_rss_mb": round(rss / 2**20, 1),
            # From the first create (backlog: the start) to the last completion seen.
            "machine": machine,
        }
        if sql_before is not None and sql_after is not None:
            result["sql"] = activity_per_step(sql_before, sql_after, n * STEPS)
        if creation is not None:
            result["creation"] = creation
        return result


async def _start_together(target: WarrenTarget, workers: int) -> float:
    """Start the workers on the backlog together; return when the clock starts.

    Each process takes about a second of CPU to start, so the first ones ready would drain
    the backlog while the others still start (on 2 cores, slowly, since they share the CPU)
    and the clock would count start-up, not throughput. The workers are held at their
    first write until the last one is ready.
    """
    if not isinstance(target.probe, PgProbe):
        raise ValueError("a backlog run needs PostgreSQL (the start barrier is a table lock)")
    async with target.probe.instance_writes_held():
        await target.start_workers(workers)
    return time.time()


async def _publish_client_counters(target: WarrenTarget, *, reopen: bool) -> None:
    """On PostgreSQL, close the client's connections and wait for every other connection to
    the database to be gone (``reopen``: then open the client's again), so that the next
    reading holds all that was written before it.

    Read right after the creation phase, the 3,500 creates of ``creation_rates`` landed in
    some runs' figures (2.6 rows inserted per step, where a 3-step instance writes 7 rows:
    2.33), and other runs fell short of it (2.06-2.18).
    """
    if not isinstance(target.probe, PgProbe):
        return  # SQLite keeps no such counters
    await target.client.close()
    await wait_for_no_other_connection(target.probe)
    if reopen:
        await target.client.connect()


async def _sql(target: WarrenTarget) -> dict[str, int] | None:
    return await pg_activity(target.probe) if isinstance(target.probe, PgProbe) else None


async def creation_rates(target: WarrenTarget, opts: Options) -> dict[str, Any]:
    """Instances accepted durably per second: ``create_batch``, and single ``create`` one
    at a time and with 32 in flight (what a busy web service would do)."""
    wf = target.client.workflow(CREATE_ONLY)
    n_batch = 2000 if not opts.smoke else 200
    n_single = 500 if not opts.smoke else 50
    await wf.create()  # warm-up: connections, queue declaration
    t0 = time.perf_counter()
    await create_batched(target, CREATE_ONLY, [None] * n_batch)
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_single):
        await wf.create()
    single_s = time.perf_counter() - t0
    gate = asyncio.Semaphore(SINGLE_CONCURRENCY)

    async def one() -> None:
        async with gate:
            await wf.create()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n_single * 2)))
    concurrent_s = time.perf_counter() - t0
    return {
        "create_batch_per_s": rate(n_batch, batch_s),
        "create_single_per_s": rate(n_single, single_s),
        "create_single_concurrent_per_s": rate(n_single * 2, concurrent_s),
        "single_concurrency": SINGLE_CONCURRENCY,
    }
