"""Celery on the same RabbitMQ, with a PostgreSQL result backend: chains of 3 tasks.

A chain is Celery's way of running dependent steps; its 3 results are written to the
database backend (``db+postgresql``), which makes each step's outcome durable the way a
workflow engine's checkpoint is. The worker is a separate ``celery worker`` process
(prefork pool, ``--celery-concurrency`` children, prefetch multiplier
``--celery-prefetch``); how and why is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from celery import Celery, chain

from benchmarks._isolation import fresh_broker, fresh_database, sqlalchemy_url
from benchmarks._load import CpuWindow
from benchmarks._options import Options
from benchmarks._probe import PgProbe, activity_per_step, pg_activity
from benchmarks._procs import ProcessGroup, python
from benchmarks._stats import rate
from benchmarks._wait import until
from benchmarks.peers.celery_app import NOOP, NOW, READY_MARKER, make_app
from benchmarks.scenarios.latency import Timing, latency_loop, warmup

STEPS = 3


@dataclass
class CeleryStack:
    app: Celery
    probe: PgProbe
    workers: ProcessGroup
    concurrency: int


@asynccontextmanager
async def celery_stack(opts: Options) -> AsyncIterator[CeleryStack]:
    """A fresh vhost and database, one ``celery worker`` process, and a client app."""
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(
            fresh_database(opts.services.pg_admin_dsn, "celery_bench"))
        broker = await stack.enter_async_context(fresh_broker(opts.services.amqp_url))
        backend = "db+" + sqlalchemy_url(dsn, "psycopg2")
        workers = ProcessGroup("celery-worker", opts.log_dir)
        stack.callback(workers.stop)
        workers.start(
            [python(), "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
             "--pool=prefork", f"--concurrency={opts.celery_concurrency}",
             f"--prefetch-multiplier={opts.celery_prefetch}",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel=WARNING"],
            {"BENCH_CELERY_BROKER": broker.url, "BENCH_CELERY_BACKEND": backend,
             "BENCH_CELERY_PREFETCH": str(opts.celery_prefetch)},
        )
        await workers.wait_ready(READY_MARKER)
        app = make_app(broker.url, backend, opts.celery_prefetch)
        stack.callback(app.close)
        probe = await PgProbe.connect(dsn)
        stack.push_async_callback(probe.close)
        yield CeleryStack(app, probe, workers, opts.celery_concurrency)


def _chain(app: Celery, task: str) -> Any:
    return chain(*(app.signature(task) for _ in range(STEPS)))


async def _successes(probe: PgProbe) -> int:
    try:
        rows = await probe.fetch("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
    except asyncpg.UndefinedTableError:  # created by the worker with the first result
        return 0
    return int(rows[0][0])


async def throughput(opts: Options, n: int) -> dict[str, Any]:
    async with celery_stack(opts) as st:
        await asyncio.to_thread(lambda: _chain(st.app, NOOP).apply_async())  # warm-up
        await until(lambda: _has(st.probe, STEPS), limit_s=60, interval=0.05,
                    what="celery warm-up", alive=st.workers.check_alive)
        cpu_before = st.workers.cpu_seconds()
        sql_before = await pg_activity(st.probe)

        def send_all() -> None:
            for _ in range(n):
                _chain(st.app, NOOP).apply_async()

        window = CpuWindow(st.workers.cpu_seconds)
        t0 = time.time()
        await asyncio.to_thread(send_all)
        sent_s = time.time() - t0
        seen = await until(lambda: _has(st.probe, STEPS * (n + 1)), limit_s=120 + n * 0.2,
                           interval=0.05, what=f"{n} celery chains",
                           alive=st.workers.check_alive)
        machine = window.stop()
        rows = await st.probe.fetch(
            "SELECT extract(epoch FROM max(date_done)) FROM celery_taskmeta")
        recorded = float(rows[0][0])
        end = recorded if t0 < recorded <= seen else seen  # guard against a clock mismatch
        elapsed = end - t0
        cpu_s, rss = st.workers.cpu_seconds() - cpu_before, st.workers.rss_bytes()
        st.workers.stop()  # makes PostgreSQL publish their final counters
        return {
            "instances": n, "steps": n * STEPS, "workers": st.concurrency,
            "elapsed_s": round(elapsed, 3), "instances_per_s": rate(n, elapsed),
            "steps_per_s": rate(n * STEPS, elapsed), "create_phase_s": round(sent_s, 3),
            "worker_cpu_s": round(cpu_s, 2),
            "worker_cpu_ms_per_step": round(cpu_s / (n * STEPS) * 1000, 3),
            "worker_rss_mb": round(rss / 2**20, 1), "machine": machine,
            "sql": activity_per_step(sql_before, await pg_activity(st.probe), n * STEPS),
            "creation": {"create_single_per_s": rate(n, sent_s)},
            "config": {"pool": "prefork", "concurrency": st.concurrency,
                       "prefetch_multiplier": opts.celery_prefetch,
                       "result_backend": "db+postgresql (psycopg2)"},
        }


async def _has(probe: PgProbe, count: int) -> bool:
    return await _successes(probe) >= count


async def latency(opts: Options, n: int) -> dict[str, Any]:
    async with celery_stack(opts) as st:

        async def once() -> Timing:
            t0 = time.time()
            result = _chain(st.app, NOW).apply_async()
            accepted = time.time()
            done = await until(functools.partial(_succeeded, st.probe, result.id), limit_s=30,
                               interval=opts.poll_s, what="a celery chain",
                               alive=st.workers.check_alive)
            times = await asyncio.to_thread(result.get, timeout=10)
            return t0, accepted, done, times

        out = await latency_loop(n, warmup(opts), st.concurrency, once)
        out["config"] = {"pool": "prefork", "concurrency": st.concurrency,
                         "prefetch_multiplier": opts.celery_prefetch}
        return out


async def _succeeded(probe: PgProbe, task_id: str) -> bool:
    try:
        rows = await probe.fetch(
            "SELECT status FROM celery_taskmeta WHERE task_id = $1", task_id)
    except asyncpg.UndefinedTableError:
        return False
    return bool(rows) and rows[0][0] == "SUCCESS"
