"""Percentiles and medians, written out so the method is visible (nearest-rank, no interpolation).

Nearest-rank is used because it always reports a value that was actually observed: with
200 samples the p99 is the 198th smallest, not a blend of two samples.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of non-empty ``values``."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(values: Sequence[float], unit_scale: float = 1000.0, digits: int = 2
                 ) -> dict[str, float | int]:
    """p50/p90/p99/max/mean/min of ``values`` (seconds) in milliseconds by default."""
    if not values:
        return {"count": 0}

    def r(x: float) -> float:
        return round(x * unit_scale, digits)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)),
        "min": r(min(values)),
        "mean": r(statistics.fmean(values)),
    }


def median_of_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Key-wise median of the runs' numbers, recursing into nested dicts.

    Non-numeric values are kept when every run agrees and dropped otherwise; booleans are
    true only if true in every run (e.g. ``available``).
    """
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if key in run]
        first = values[0]
        if isinstance(first, bool):
            out[key] = all(bool(v) for v in values)
        elif isinstance(first, int | float) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            med = statistics.median(values)
            out[key] = round(med, 3) if isinstance(med, float) else med
        elif isinstance(first, Mapping) and all(isinstance(v, Mapping) for v in values):
            out[key] = median_of_runs(values)
        elif all(v == first for v in values):
            out[key] = first
    return out


def rate(count: float, seconds: float) -> float:
    """``count / seconds`` rounded to 0.1, or 0 when no time passed."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most ``[start, end)`` intervals open at once (an end and a start at the same instant do
    not overlap: a freed concurrency slot is handed on in the transaction that frees it)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = most = 0
    for _, delta in edges:
        open_now += delta
        most = max(most, open_now)
    return most
