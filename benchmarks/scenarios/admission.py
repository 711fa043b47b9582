"""``admission``: N instances of one workflow behind ``max_concurrency``; is admission flat?

The workers (ready before the clock starts) serve ``bench-admit``, one no-op step, with its
limit set by ``WARREN_WORKFLOW_MAX_CONCURRENCY`` (``--max-concurrency``, default 100). All N
instances are created with ``create_batch`` as fast as it goes, so almost all of them wait
in the admission queue. Measured:

- creation rate: instances accepted durably per second (``create_batch`` returned);
- admission rate: instances per second whose first turn started, from the engine's own
  ``started_at_ms`` (the commit of an instance's first admitted turn), read after the run;
- flatness: the admission rate of the first 10 % of admissions (the queue is at its
  longest) against the last 10 % (the queue is nearly empty), their ratio (last / first;
  flat = 1.0), and the gaps between consecutive admissions in each window (a turn batch
  commits many admissions with one clock reading, so most gaps are 0 ms: the gap
  percentiles show the batches' cadence). The queue depth during each window is reported
  next to it. The first window also overlaps the creation burst (the workers still handle
  create messages then), which alone costs it some rate: see ``admitted_during_creation``.
  ``settled_window`` is the 10 % of admissions from the moment every create message has
  had its turn (the queue is still long, the creation load is over), and
  ``settled_ratio`` = last / settled;
- the limit: ``warren_gates.running``, the instances holding a slot and those in status
  ``running``, sampled every 50 ms in one consistent snapshot, and the most overlapping
  ``[started_at_ms, ended_at_ms)`` intervals recorded by the engine; all must stay within
  the limit (``limit_held``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count, pairwise
from typing import Any

from benchmarks._options import Options
from benchmarks._probe import span_ms
from benchmarks._stats import distribution, max_overlap, rate
from benchmarks._warren import WarrenTarget, warren_target
from benchmarks.scenarios._common import create_batched, wait_complete

WORKFLOW = "bench-admit"
WINDOW_FRACTION = 0.1  # first / last 10 % of admissions
SAMPLE_S = 0.05
UNTURNED_EVERY = 10  # count the instances no turn has seen yet every 10th sample (0.5 s)

_SAMPLE_SQL = (
    "SELECT g.running, g.queued, "
    "(SELECT count(*) FROM warren_instances WHERE workflow = $1 AND slot), "
    "(SELECT count(*) FROM warren_instances WHERE workflow = $1 AND status = 'running') "
    "FROM warren_gates g WHERE g.workflow = $1"
)
# Created, but their create message not handled yet: never refused (not in the admission
# index) nor admitted (no slot). Served by the partial index ix_instances_unturned.
_UNTURNED_SQL = (
    "SELECT count(*) FROM warren_instances "
    "WHERE status = 'queued' AND admit_priority IS NULL AND NOT slot AND workflow = $1"
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the gate, in one snapshot (``at_ms``: the client's wall clock)."""

    at_ms: float
    gate_running: int
    gate_queued: int
    slots: int
    status_running: int
    unturned: int | None


async def run(engine: str, opts: Options) -> dict[str, Any]:
    if engine != "warren":
        raise ValueError("admission runs on the RabbitMQ + PostgreSQL engine only")
    n = opts.size(100_000, 300)
    limit = opts.max_concurrency
    async with warren_target(engine, opts.services, opts.log_dir) as target:
        # The workers read the limit from the environment (it overrides the class's 100).
        target.env["WARREN_WORKFLOW_MAX_CONCURRENCY"] = f"{WORKFLOW}={limit}"
        await target.start_workers(opts.workers)
        samples: list[Sample] = []
        sampler = asyncio.create_task(_sample(target, samples))
        try:
            cpu_before = target.worker_cpu_seconds()
            t0 = time.time()
            await create_batched(target, WORKFLOW, [None] * n)
            created_s = time.time() - t0
            await wait_complete(target, WORKFLOW, n, limit_s=120 + n * 0.2, interval=0.2)
            cpu_s = target.worker_cpu_seconds() - cpu_before
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        _, last_ms = await span_ms(target.probe, WORKFLOW)
        rows = await target.probe.fetch(
            "SELECT created_at_ms, started_at_ms, ended_at_ms FROM warren_instances "
            "WHERE workflow = $1 ORDER BY started_at_ms", WORKFLOW)
    created = sorted(int(c) for c, _, _ in rows)
    starts = [int(s) for _, s, _ in rows]
    k = max(1, int(n * WINDOW_FRACTION))
    first = _window(starts, 0, k, created, samples)
    last = _window(starts, n - 1 - k, n - 1, created, samples)
    creation_end_ms = (t0 + created_s) * 1000
    # Once every create message has had its turn, only admissions (and the turns of the
    # admitted) are left: the window from there has the longest queue and no creation load.
    settled_ms = next((s.at_ms for s in samples
                       if s.at_ms >= creation_end_ms and s.unturned == 0), None)
    lo = n if settled_ms is None else bisect_left(starts, settled_ms)
    settled = _window(starts, lo, lo + k, created, samples) if lo + k <= n - 1 else None
    most = {
        "gate": max((s.gate_running for s in samples), default=0),
        "slots": max((s.slots for s in samples), default=0),
        "status_running": max((s.status_running for s in samples), default=0),
        "from_rows": max_overlap([(int(s), int(e)) for _, s, e in rows]),
    }
    return {
        "instances": n, "max_concurrency": limit, "workers": opts.workers,
        "creation_per_s": rate(n, created_s), "create_phase_s": round(created_s, 3),
        "creates_turned_s": (round(settled_ms / 1000 - t0, 3) if settled_ms is not None
                             else None),
        "admission_per_s": rate(n - 1, (starts[-1] - starts[0]) / 1000),
        "admission_span_s": round((starts[-1] - starts[0]) / 1000, 3),
        "elapsed_s": round(last_ms / 1000 - t0, 3),
        "admitted_during_creation": sum(1 for s in starts if s <= creation_end_ms),
        "window": k, "first_window": first, "last_window": last,
        "flat_ratio": _ratio(last, first),
        "settled_window": settled,
        "settled_ratio": _ratio(last, settled) if settled is not None else None,
        "max_running": most, "limit_held": max(most.values()) <= limit,
        "samples": len(samples),
        "worker_cpu_ms_per_instance": round(cpu_s / n * 1000, 3),
    }


def _ratio(later: dict[str, Any], earlier: dict[str, Any]) -> float | None:
    """Admission rate of ``later`` / of ``earlier`` (1.0: the cost per admission is flat)."""
    if not later["per_s"] or not earlier["per_s"]:
        return None
    return round(float(later["per_s"]) / float(earlier["per_s"]), 3)


async def _sample(target: WarrenTarget, out: list[Sample]) -> None:
    """Read the gate every ``SAMPLE_S`` until cancelled (the run's end)."""
    for i in count():
        rows = await target.probe.fetch(_SAMPLE_SQL, WORKFLOW)
        unturned = None
        if i % UNTURNED_EVERY == 0:
            unturned = int((await target.probe.fetch(_UNTURNED_SQL, WORKFLOW))[0][0])
        if rows:  # the gate row appears once a worker has configured it
            running, queued, slots, status_running = (int(x) for x in rows[0])
            out.append(Sample(time.time() * 1000, running, queued, slots, status_running,
                              unturned))
        await asyncio.sleep(SAMPLE_S)


def _window(starts: Sequence[int], lo: int, hi: int, created: Sequence[int],
            samples: Sequence[Sample]) -> dict[str, Any]:
    """Rate and gaps of the admissions ``starts[lo:hi + 1]`` (``starts``: every admission,
    in order), and the queue meanwhile.

    ``backlog``: instances created and not yet admitted at the window's first and last
    admission (``created``: every ``created_at_ms``, sorted); ``queued_median``: the gate's
    ``queued`` (refused once, so in the admission index) sampled during the window.
    """
    window = starts[lo:hi + 1]
    gaps = [(b - a) / 1000 for a, b in pairwise(window)]
    span_s = (window[-1] - window[0]) / 1000
    queued = [s.gate_queued for s in samples if window[0] <= s.at_ms <= window[-1]]
    return {
        "admissions": len(gaps), "span_s": round(span_s, 3), "per_s": rate(len(gaps), span_s),
        "gap_ms": distribution(gaps),
        "backlog": [bisect_right(created, starts[i]) - i for i in (lo, hi)],
        "queued_median": statistics.median(queued) if queued else None,
    }


