"""Helpers shared by the Warren scenarios: bulk creation and waiting for completion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from benchmarks._probe import errors, instance_state, status_counts
from benchmarks._wait import BenchmarkFailed
from benchmarks._warren import WarrenTarget

BATCH = 100  # the largest create_batch the client takes (API.md §3)


async def create_batched(target: WarrenTarget, workflow: str, params: Sequence[Any],
                         ids: Sequence[str] | None = None) -> list[str]:
    """Create instances with ``create_batch``, 100 at a time, in order."""
    wf = target.client.workflow(workflow)
    created: list[str] = []
    for start in range(0, len(params), BATCH):
        chunk = params[start:start + BATCH]
        items = [{"params": p} if ids is None else {"id": ids[start + i], "params": p}
                 for i, p in enumerate(chunk)]
        created += [inst.id for inst in await wf.create_batch(items)]
    return created


async def wait_complete(target: WarrenTarget, workflow: str, n: int, limit_s: float,
                        interval: float = 0.1) -> None:
    """Wait until ``n`` instances of ``workflow`` are complete; fail on any errored one."""
    deadline = time.monotonic() + limit_s
    while True:
        counts = await status_counts(target.probe, workflow)
        if counts.get("errored"):
            raise BenchmarkFailed(
                f"{counts['errored']} {workflow} instance(s) errored: "
                f"{await errors(target.probe, workflow)}"
            )
        if counts.get("complete", 0) >= n:
            return
        target.check_workers()
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"{workflow}: not all {n} complete after {limit_s}s: {counts}")
        await asyncio.sleep(interval)


async def wait_one(target: WarrenTarget, workflow: str, instance_id: str, limit_s: float,
                   interval: float) -> tuple[float, Any]:
    """Poll one instance until complete; return (wall time first seen complete, output)."""
    deadline = time.monotonic() + limit_s
    checks = 0
    while True:
        state = await instance_state(target.probe, workflow, instance_id)
        if state is not None:
            status, output = state
            if status == "complete":
                return time.time(), output
            if status in ("errored", "terminated"):
                raise BenchmarkFailed(f"{workflow} {instance_id} ended {status}: {output}")
        checks += 1
        if checks % 500 == 0:
            target.check_workers()
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"{workflow} {instance_id} not complete after {limit_s}s")
        await asyncio.sleep(interval)


async def wait_status(target: WarrenTarget, workflow: str, status: str, n: int,
                      limit_s: float) -> None:
    """Wait until ``n`` instances are in ``status`` (e.g. all ``waiting``)."""
    deadline = time.monotonic() + limit_s
    while True:
        counts = await status_counts(target.probe, workflow)
        if counts.get("errored"):
            raise BenchmarkFailed(
                f"{workflow} instance(s) errored: {await errors(target.probe, workflow)}")
        if counts.get(status, 0) >= n:
            return
        target.check_workers()
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"{workflow}: not {n} {status} after {limit_s}s: {counts}")
        await asyncio.sleep(0.1)
