"""DBOS Transact on the same PostgreSQL: a ``@DBOS.workflow`` calling 3 ``@DBOS.step``s.

Two documented ways to run DBOS workflows, used where each is fastest:

- ``queue``: the client enqueues into a DBOS queue (``enqueue_in_transaction``, 100 per
  transaction: DBOS's analog of ``create_batch``) and ``--workers`` DBOS processes dequeue
  and run them — the same shape as Warren's client + worker processes. Default for
  ``throughput``.
- ``inprocess``: ``DBOS.start_workflow`` in the benchmark process; the workflow starts at
  once on DBOS's executor, with no queue polling. Default for ``latency``, ``fanout`` and
  ``long-history``, where a queue's polling interval would only add delay.

``--dbos-mode`` forces one for every scenario.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSClient, WorkflowHandle

from benchmarks._isolation import fresh_database, sqlalchemy_url
from benchmarks._load import CpuWindow
from benchmarks._options import Options
from benchmarks._probe import PgProbe, activity_per_step, pg_activity
from benchmarks._procs import ProcessGroup, python
from benchmarks._stats import rate
from benchmarks._wait import BenchmarkFailed, until
from benchmarks.peers import dbos_app
from benchmarks.scenarios.latency import Timing, latency_loop, warmup

STEPS = 3
BATCH = 100


def mode(opts: Options, default: str) -> str:
    return default if opts.dbos_mode == "auto" else opts.dbos_mode


@asynccontextmanager
async def dbos_database(opts: Options) -> AsyncIterator[tuple[str, PgProbe]]:
    async with fresh_database(opts.services.pg_admin_dsn, "dbos_bench") as dsn:
        probe = await PgProbe.connect(dsn)
        try:
            yield dsn, probe
        finally:
            await probe.close()


@asynccontextmanager
async def dbos_workers(opts: Options, dsn: str) -> AsyncIterator[ProcessGroup]:
    """``opts.workers`` DBOS worker processes; the first creates the schema alone."""
    group = ProcessGroup("dbos-worker", opts.log_dir)
    try:
        argv = [python(), "-c", "from benchmarks.peers.dbos_app import main; main()"]
        for i in range(opts.workers):
            group.start(argv, {"DBOS_SYSTEM_DATABASE_URL": dsn, "DBOS_EXECUTOR_ID": f"w{i}"})
            await group.wait_ready(dbos_app.READY_MARKER)
        yield group
    finally:
        group.stop()


@asynccontextmanager
async def dbos_inprocess(dsn: str) -> AsyncIterator[None]:
    """DBOS launched in this process (it is a process-wide singleton).

    Its set-up and tear-down run in a thread pool of our own: DBOS installs its executor as
    the loop's default and shuts it down on ``destroy``, so a second run through
    ``asyncio.to_thread`` would find it closed."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as pool:
        await loop.run_in_executor(pool, lambda: DBOS(config=dbos_app.config(dsn)))
        await loop.run_in_executor(pool, DBOS.launch)
        try:
            yield
        finally:
            await loop.run_in_executor(pool, DBOS.destroy)
            loop.set_default_executor(ThreadPoolExecutor())


async def _count_success(probe: PgProbe, name: str) -> int:
    rows = await probe.fetch(
        "SELECT status, count(*) FROM dbos.workflow_status WHERE name = $1 GROUP BY status",
        name)
    counts = {str(s): int(c) for s, c in rows}
    if counts.get("ERROR"):
        raise BenchmarkFailed(f"{counts['ERROR']} DBOS {name} workflows failed")
    return counts.get("SUCCESS", 0)


async def _last_completion_s(probe: PgProbe, name: str) -> float:
    rows = await probe.fetch(
        "SELECT max(coalesce(completed_at, updated_at)) FROM dbos.workflow_status "
        "WHERE name = $1", name)
    return float(rows[0][0]) / 1000


# -- throughput ----------------------------------------------------------------------------

async def throughput(opts: Options, n: int) -> dict[str, Any]:
    how = mode(opts, "queue")
    async with dbos_database(opts) as (dsn, probe):
        if how == "queue":
            async with dbos_workers(opts, dsn) as workers:
                result = await _throughput_queue(dsn, probe, n, workers, opts)
        else:
            async with dbos_inprocess(dsn):
                result = await _throughput_inprocess(probe, n)
        result["config"] = {"mode": how, "queue_polling_interval_s": dbos_app.POLLING_INTERVAL_S,
                            "workers": opts.workers if how == "queue" else 1}
        return result


async def _throughput_queue(dsn: str, probe: PgProbe, n: int, workers: ProcessGroup,
                            opts: Options) -> dict[str, Any]:
    client = await asyncio.to_thread(lambda: DBOSClient(system_database_url=dsn))
    engine = sa.create_engine(sqlalchemy_url(dsn, "psycopg"), pool_size=2)
    try:
        options = {"workflow_name": "noop3", "queue_name": dbos_app.QUEUE}

        def enqueue_all() -> None:
            for start in range(0, n, BATCH):
                with engine.begin() as conn:
                    for _ in range(min(BATCH, n - start)):
                        client.enqueue_in_transaction(conn, options)  # type: ignore[arg-type]

        cpu_before = workers.cpu_seconds()
        sql_before = await pg_activity(probe)
        window = CpuWindow(workers.cpu_seconds)
        t0 = time.time()
        await asyncio.to_thread(enqueue_all)
        created_s = time.time() - t0
        await until(lambda: _at_least(probe, "noop3", n), limit_s=120 + n * 0.2, interval=0.05,
                    what=f"{n} DBOS workflows", alive=workers.check_alive)
        machine = window.stop()
        elapsed = await _last_completion_s(probe, "noop3") - t0
        cpu_s, rss = workers.cpu_seconds() - cpu_before, workers.rss_bytes()
        workers.stop()  # makes PostgreSQL publish their final counters
        engine.dispose()  # and the enqueuing connections theirs
        return _throughput_result(n, elapsed, created_s) | {
            "workers": opts.workers, "worker_cpu_s": round(cpu_s, 2),
            "worker_cpu_ms_per_step": round(cpu_s / (n * STEPS) * 1000, 3),
            "worker_rss_mb": round(rss / 2**20, 1), "machine": machine,
            "sql": activity_per_step(sql_before, await pg_activity(probe), n * STEPS),
        }
    finally:
        await asyncio.to_thread(client.destroy)
        engine.dispose()


async def _throughput_inprocess(probe: PgProbe, n: int) -> dict[str, Any]:
    def start_all() -> list[Any]:
        return [DBOS.start_workflow(dbos_app.noop3) for _ in range(n)]

    t0 = time.time()
    await asyncio.to_thread(start_all)
    created_s = time.time() - t0
    await until(lambda: _at_least(probe, "noop3", n), limit_s=120 + n * 0.2, interval=0.05,
                what=f"{n} DBOS workflows")
    elapsed = await _last_completion_s(probe, "noop3") - t0
    return _throughput_result(n, elapsed, created_s) | {"workers": 1}


async def _at_least(probe: PgProbe, name: str, n: int) -> bool:
    return await _count_success(probe, name) >= n


def _throughput_result(n: int, elapsed: float, created_s: float) -> dict[str, Any]:
    return {"instances": n, "steps": n * STEPS, "elapsed_s": round(elapsed, 3),
            "instances_per_s": rate(n, elapsed), "steps_per_s": rate(n * STEPS, elapsed),
            "create_phase_s": round(created_s, 3),
            "creation": {"create_batch_per_s": rate(n, created_s)}}


# -- latency -------------------------------------------------------------------------------

async def latency(opts: Options, n: int) -> dict[str, Any]:
    how = mode(opts, "inprocess")
    async with dbos_database(opts) as (dsn, probe):
        if how == "inprocess":
            async with dbos_inprocess(dsn):
                out = await latency_loop(n, warmup(opts), 1, _inprocess_once)
        else:
            async with dbos_workers(opts, dsn) as workers:
                client = await asyncio.to_thread(lambda: DBOSClient(system_database_url=dsn))
                try:
                    out = await latency_loop(
                        n, warmup(opts), 1, lambda: _queue_once(client, probe, opts, workers))
                finally:
                    await asyncio.to_thread(client.destroy)
        out["config"] = {"mode": how, "queue_polling_interval_s": dbos_app.POLLING_INTERVAL_S}
        return out


async def _inprocess_once() -> Timing:
    """``start_workflow`` then ``get_result`` — DBOS's own in-process wait, no polling."""
    def once() -> Timing:
        t0 = time.time()
        handle = DBOS.start_workflow(dbos_app.timed3)
        accepted = time.time()
        times = handle.get_result()
        return t0, accepted, time.time(), times
    return await asyncio.to_thread(once)


async def _queue_once(client: DBOSClient, probe: PgProbe, opts: Options,
                      workers: ProcessGroup) -> Timing:
    t0 = time.time()
    handle: WorkflowHandle[list[float]] = client.enqueue(
        {"workflow_name": "timed3", "queue_name": dbos_app.QUEUE})
    accepted = time.time()
    wid = handle.get_workflow_id()
    done = await until(lambda: _succeeded(probe, wid), limit_s=30, interval=opts.poll_s,
                       what="a DBOS workflow", alive=workers.check_alive)
    times = await asyncio.to_thread(handle.get_result)
    return t0, accepted, done, times


async def _succeeded(probe: PgProbe, workflow_id: str) -> bool:
    rows = await probe.fetch(
        "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = $1", workflow_id)
    if rows and rows[0][0] == "ERROR":
        raise BenchmarkFailed(f"DBOS workflow {workflow_id} failed")
    return bool(rows) and rows[0][0] == "SUCCESS"


# -- fanout and long history (in-process: no queue polling between steps) -------------------

async def fanout(opts: Options, n: int) -> dict[str, Any]:
    async with dbos_database(opts) as (dsn, _), dbos_inprocess(dsn):
        t0 = time.time()
        handle = await DBOS.start_workflow_async(dbos_app.fanout, n)
        await handle.get_result()
        wall = time.time() - t0
        return {"steps": n, "wall_s": round(wall, 3), "steps_per_s": rate(n, wall),
                "config": {"mode": "inprocess"}}


async def long_history(opts: Options, ks: tuple[int, ...]) -> dict[str, Any]:
    async with dbos_database(opts) as (dsn, _), dbos_inprocess(dsn):
        per_step: dict[str, float] = {}
        for k in ks:
            def once(k: int = k) -> float:
                t0 = time.time()
                DBOS.start_workflow(dbos_app.long_history, k).get_result()
                return time.time() - t0
            wall = await asyncio.to_thread(once)
            per_step[str(k)] = round(wall / k * 1000, 3)
        return {"per_step_ms": per_step, "ratio": _ratio(per_step, ks),
                "config": {"mode": "inprocess"}}


def _ratio(per_step: dict[str, float], ks: tuple[int, ...]) -> float:
    low, high = per_step[str(min(ks))], per_step[str(max(ks))]
    return round(high / low, 3) if low else 0.0
