"""Wall-clock time in integer milliseconds, the unit of every stored timestamp."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the UNIX epoch (wall clock, shared across workers)."""
    return time.time_ns() // 1_000_000
