"""The JSON lines a benchmark prints, and the Warren/peer comparison.

stdout carries only these lines (one per engine, then the comparison), so that
``python -m benchmarks throughput --compare > out.jsonl`` is the whole record of a run.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil


def emit(line: Mapping[str, Any]) -> None:
    """Write one JSON line to stdout and flush (the benchmark's output)."""
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def host() -> dict[str, Any]:
    """The machine, so that a number is never quoted without what it ran on."""
    return {
        "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "platform": platform.platform(terse=True),
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def lookup(result: Mapping[str, Any], path: str) -> float | None:
    """A number at a dotted path (``create_to_complete_ms.p50``), or ``None``."""
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def comparison(scenario: str, warren: Mapping[str, Any], peers: Sequence[Mapping[str, Any]],
               headline: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Warren/peer ratios of the headline medians. ``ratio`` is always Warren / peer;
    ``better`` says which direction wins, ``warren_ahead`` how many times Warren is ahead
    (peer / Warren when lower is better)."""
    out: dict[str, Any] = {"scenario": scenario, "compare": "warren", "date": now_iso()}
    for peer in peers:
        figures: dict[str, Any] = {}
        for path, better in headline:
            w = lookup(warren.get("median", {}), path)
            p = lookup(peer.get("median", {}), path)
            if w is None or p is None or w == 0 or p == 0:
                figures[path] = {"warren": w, "peer": p, "ratio": None, "better": better}
                continue
            ahead = w / p if better == "higher" else p / w
            figures[path] = {"warren": w, "peer": p, "ratio": round(w / p, 3),
                             "better": better, "warren_ahead": round(ahead, 2)}
        out[str(peer.get("engine"))] = figures
    return out
