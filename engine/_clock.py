"""Wall-clock time in integer milliseconds, the unit of every stored timestamp."""

from __future__ import annotations

import time

_skew_ms = 0
"""What ``sdk.testing``'s virtual clock has added to the wall clock (0 outside tests)."""


def now_ms() -> int:
    """Milliseconds since the UNIX epoch (wall clock, shared across workers)."""
    return time.time_ns() // 1_000_000 + _skew_ms


def set_skew_ms(skew_ms: int) -> None:
    """Run this process's clock ``skew_ms`` ahead of the wall clock (tests only)."""
    global _skew_ms
    _skew_ms = skew_ms


def skew_ms() -> int:
    return _skew_ms
