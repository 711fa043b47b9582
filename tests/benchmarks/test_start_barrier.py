"""The start barrier of ``scale-out``'s backlog runs: ready workers wait for the others.

Without it the first worker process ready drains the backlog while the others still start,
and the curve measures start-up (4 workers came out 10 % below 2). Run on RabbitMQ and
PostgreSQL, with real worker processes, as the benchmark runs them.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from benchmarks._isolation import Services
from benchmarks._warren import warren_target
from benchmarks.scenarios._common import create_batched, wait_complete
from tests.helpers import asyncpg_dsn, eventually

WORKFLOW = "bench-noop3"
N = 20


async def test_held_workers_get_ready_and_write_nothing_until_released(
    postgres_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    # The session's database and vhost stand for "the services are up" (skipped locally,
    # failed in CI without them); the benchmark's harness makes its own, as it always does.
    async with warren_target("warren", Services.from_env(), tmp_path) as target:
        await create_batched(target, WORKFLOW, [None] * N)
        watcher = await asyncpg.connect(asyncpg_dsn(target.env["WARREN_DATABASE_URL"]))
        try:
            async with target.probe.instance_writes_held():
                await target.start_workers(2)  # start-up writes no instance: not held

                async def turns_waiting() -> int:
                    return int(await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock'"))

                await eventually(turns_waiting, timeout=30, message="a first turn held")
                moved = await watcher.fetchval(
                    "SELECT count(*) FROM warren_instances WHERE workflow = $1 "
                    "AND (status <> 'queued' OR fence > 0)", WORKFLOW)
                assert moved == 0
            await wait_complete(target, WORKFLOW, N, limit_s=60, interval=0.05)
        finally:
            await watcher.close()
