"""Polling with a deadline and a liveness check, for every engine's completion watcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class BenchmarkFailed(RuntimeError):
    """The engine did not do what the scenario needs (an instance failed, a timeout)."""


async def until(check: Callable[[], Awaitable[bool]], *, limit_s: float, interval: float,
                what: str, alive: Callable[[], None] | None = None) -> float:
    """Poll ``check`` until true; return the wall time (``time.time()``) it was first true.

    ``alive`` is called every ~0.5 s and should raise if a worker died, so a dead worker
    fails the run at once instead of after the timeout.
    """
    deadline = time.monotonic() + limit_s
    next_alive = time.monotonic() + 0.5
    while True:
        if await check():
            return time.time()
        now = time.monotonic()
        if alive is not None and now >= next_alive:
            alive()
            next_alive = now + 0.5
        if now > deadline:
            raise BenchmarkFailed(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(interval)
