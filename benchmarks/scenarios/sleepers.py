"""``sleepers``: N instances each sleeping a random 1-20 s, then one step.

Besides lateness and the early count (as in ``delay``), this checks that a sleeping
instance costs a worker nothing, in two ways:

- ``rss_mb.parked``: before the timed sleepers, N/20 and then N instances in all are
  parked on a sleep of a day (workflow ``bench-park``); once all of them are ``waiting``
  and the workers have settled, worker RSS is sampled for 2 s at each of the two counts.
  This is the target's "between 1,000 and 20,000 sleepers": with sleeps of 1-20 s the
  early ones wake while later ones are still being created, so the timed run never has
  N asleep at once.
- ``rss_mb.during_flood``: worker RSS sampled every 0.5 s during the timed run, with the
  number of instances in ``waiting``, at the first sample with N/20 sleepers and at the
  sample with the most (``max_sleepers``). It includes what the create flood itself holds.

The store's and broker's footprint are reported too (the broker's is the whole server's).
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
from benchmarks.scenarios._common import create_batched, wait_complete, wait_status
from benchmarks.scenarios.delay import WORKFLOW, lateness

MB = 2**20
PARKED = "bench-park"
PARK_MS = 24 * 3600 * 1000


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
        parked = await _parked_rss(target, n)
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
            "rss_mb": {"idle": round(idle_rss / MB, 1), "parked": parked,
                       "during_flood": _rss_summary(samples, _few(n))},
            "resources": await _resources(target),
        }


def _few(n: int) -> int:
    """The smaller sleeper count RSS is compared at: 1,000 of the default 20,000."""
    return max(1, n // 20)


async def _parked_rss(target: WarrenTarget, n: int) -> dict[str, Any]:
    """Worker RSS with N/20, then N instances asleep for a day (see the module doc)."""
    rss: dict[int, int] = {}
    parked = 0
    for count in (_few(n), n):
        await create_batched(target, PARKED, [{"delay_ms": PARK_MS}] * (count - parked))
        parked = count
        await wait_status(target, PARKED, "waiting", count, limit_s=120 + count * 0.05)
        rss[count] = await _settled_rss(target)
    few, many = rss[_few(n)], rss[n]
    return {f"at_{_few(n)}": round(few / MB, 1), f"at_{n}": round(many / MB, 1),
            "growth_ratio": round(many / few, 3) if few else None}


async def _settled_rss(target: WarrenTarget) -> int:
    """The highest worker RSS over 2 s, sampled after a short pause for the last turns."""
    await asyncio.sleep(1.0)
    samples = []
    for _ in range(8):
        samples.append(target.worker_rss_bytes())
        await asyncio.sleep(0.25)
    return max(samples)


async def _sample_forever(target: WarrenTarget, samples: list[Sample]) -> None:
    while True:
        counts = await status_counts(target.probe, WORKFLOW)
        samples.append(Sample(time.time(), target.worker_rss_bytes(), counts.get("waiting", 0)))
        await asyncio.sleep(0.5)


def _rss_summary(samples: list[Sample], threshold: int) -> dict[str, Any]:
    if not samples:
        return {}
    first = next((s for s in samples if s.sleeping >= threshold), samples[-1])
    most = max(samples, key=lambda s: s.sleeping)
    return {
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
