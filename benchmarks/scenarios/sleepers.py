"""``sleepers``: N instances each sleeping a random 1-20 s, then one step.

Besides lateness and the early count (as in ``delay``), this checks that a sleeping
instance costs a worker nothing: worker RSS is sampled every 0.5 s together with the number
of instances in ``waiting``, and reported at the first sample with 1,000 sleepers and at the
sample with the most. Sleeps start as instances are created, so the early ones wake while
later ones are still being created: ``max_sleepers`` says how many slept at once. The
store's and broker's footprint are reported too (the broker's is the whole server's).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks._options import Options
from benchmarks._probe import status_counts
from benchmarks._stats import rate
from benchmarks._warren import ENGINES, WarrenTarget, warren_target
from benchmarks.scenarios._common import create_batched, wait_complete
from benchmarks.scenarios.delay import WORKFLOW, lateness

MB = 2**20


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    rss: int
    sleeping: int


async def run(engine: str, opts: Options) -> dict[str, Any]:
    if engine not in ENGINES:
        raise ValueError(f"sleepers does not support {engine!r}")
    n = opts.size(20_000, 100)
    low_ms, high_ms = (int(s * 1000) for s in opts.sleep_range_s)
    workers = 1 if engine == "warren-embedded" else opts.workers
    async with warren_target(engine, opts.services, opts.log_dir, workers=workers) as target:
        idle_rss = target.worker_rss_bytes()
        samples: list[Sample] = []
        sampler = asyncio.create_task(_sample_forever(target, samples))
        rng = random.Random(11)
        t0 = time.time()
        try:
            await create_batched(target, WORKFLOW,
                                 [{"delay_ms": rng.randint(low_ms, high_ms)} for _ in range(n)])
            created_s = time.time() - t0
            await wait_complete(target, WORKFLOW, n, limit_s=high_ms / 1000 + 120 + n * 0.05,
                                interval=0.5)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        return {
            "instances": n, "workers": workers, "sleep_range_s": [low_ms / 1000, high_ms / 1000],
            "create_per_s": rate(n, created_s), "wall_s": round(time.time() - t0, 1),
            **await lateness(target),
            "rss_mb": _rss_summary(samples, idle_rss, min(1000, n)),
            "resources": await _resources(target),
        }


async def _sample_forever(target: WarrenTarget, samples: list[Sample]) -> None:
    while True:
        counts = await status_counts(target.probe, WORKFLOW)
        samples.append(Sample(time.time(), target.worker_rss_bytes(), counts.get("waiting", 0)))
        await asyncio.sleep(0.5)


def _rss_summary(samples: list[Sample], idle: int, threshold: int) -> dict[str, Any]:
    if not samples:
        return {"idle": round(idle / MB, 1)}
    first = next((s for s in samples if s.sleeping >= threshold), samples[-1])
    most = max(samples, key=lambda s: s.sleeping)
    return {
        "idle": round(idle / MB, 1),
        f"at_{threshold}_sleepers": round(first.rss / MB, 1),
        "at_max_sleepers": round(most.rss / MB, 1),
        "max_sleepers": most.sleeping,
        "peak": round(max(s.rss for s in samples) / MB, 1),
        "growth_ratio": round(most.rss / first.rss, 3) if first.rss else None,
    }


def _file_sizes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


async def _resources(target: WarrenTarget) -> dict[str, Any]:
    """Store size, and the broker server's RSS (shared with anything else using it)."""
    out: dict[str, Any] = {}
    if target.embedded:
        path = target.env["WARREN_DATABASE_URL"].split("///", 1)[1]
        out["sqlite_mb"] = round(await asyncio.to_thread(_file_sizes, path) / MB, 1)
        return out
    rows = await target.probe.fetch("SELECT pg_database_size(current_database())")
    out["postgres_db_mb"] = round(int(rows[0][0]) / MB, 1)
    beam = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
    if beam:
        out["rabbitmq_server_rss_mb"] = round(sum(p.memory_info().rss for p in beam) / MB, 1)
    return out
