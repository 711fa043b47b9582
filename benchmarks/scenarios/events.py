"""``events``: N instances each waiting for an event; send them all; event -> step latency.

Each instance runs ``await step.wait_for_event("x", "go")`` then one step returning
``time.time()``. Once all N are ``waiting``, the events are sent with
``instance.send_event("go", ...)`` (100 in flight); latency = the step's start - the moment
its event was sent.

``wait_for_event`` arrives with the events issue: until the SDK and engine support it, the
scenario reports ``{"available": false, "reason": ...}`` instead of failing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks._options import Options
from benchmarks._probe import errors, outputs, status_counts
from benchmarks._stats import distribution, rate
from benchmarks._warren import ENGINES, WarrenTarget, warren_target
from benchmarks.scenarios._common import BATCH, create_batched, wait_complete, wait_status
from sdk import Instance

WORKFLOW = "bench-event"


class Unavailable(Exception):
    """The SDK or engine cannot run the scenario yet."""


async def run(engine: str, opts: Options) -> dict[str, Any]:
    if engine not in ENGINES:
        raise ValueError(f"events does not support {engine!r}")
    n = opts.size(5000, 20)
    workers = 1 if engine == "warren-embedded" else opts.workers
    async with warren_target(engine, opts.services, opts.log_dir, workers=workers) as target:
        try:
            await _check_available(target)
            return await _measure(target, n, workers)
        except Unavailable as exc:
            return {"available": False, "reason": str(exc)}


async def _check_available(target: WarrenTarget) -> None:
    if not callable(getattr(Instance, "send_event", None)):
        raise Unavailable("sdk.Instance has no send_event yet")
    inst = await target.client.workflow(WORKFLOW).create(id="probe")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = await status_counts(target.probe, WORKFLOW)
        if counts.get("errored"):
            detail = "; ".join(await errors(target.probe, WORKFLOW))
            if "NotImplementedError" in detail:
                raise Unavailable(f"step.wait_for_event is not implemented: {detail}")
            raise RuntimeError(f"events probe instance errored: {detail}")
        if counts.get("waiting"):
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("events probe instance never started waiting")
    try:
        await inst.send_event("go", {})
    except NotImplementedError as exc:
        raise Unavailable(f"Instance.send_event is not implemented: {exc}") from None
    await wait_complete(target, WORKFLOW, 1, limit_s=30)


async def _measure(target: WarrenTarget, n: int, workers: int) -> dict[str, Any]:
    ids = [f"e{i}" for i in range(n)]
    await create_batched(target, WORKFLOW, [None] * n, ids=ids)
    await wait_status(target, WORKFLOW, "waiting", n, limit_s=120 + n * 0.05)
    sent: dict[str, float] = {}

    async def send(instance_id: str) -> None:
        sent[instance_id] = time.time()
        await Instance(target.client, WORKFLOW, instance_id).send_event("go", {})

    t0 = time.time()
    for start in range(0, n, BATCH):
        await asyncio.gather(*(send(i) for i in ids[start:start + BATCH]))
    send_s = time.time() - t0
    await wait_complete(target, WORKFLOW, n + 1, limit_s=120 + n * 0.05)
    latency = [float(out) - sent[i] for i, out in await outputs(target.probe, WORKFLOW)
               if i in sent]
    return {"available": True, "instances": n, "workers": workers,
            "send_per_s": rate(n, send_s), "event_to_step_ms": distribution(latency)}
