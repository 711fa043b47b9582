"""Workflows served by worker subprocesses in the recovery tests.

Every step body appends ``instance:step:attempt:phase`` to the file named by
``WARREN_TEST_EFFECTS`` (O_APPEND writes of one short line are atomic), so the test can
count how often each body really ran, across processes and crashes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep


def record(instance: str, step: str, attempt: int, phase: str) -> None:
    fd = os.open(os.environ["WARREN_TEST_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{instance}:{step}:{attempt}:{phase}\n".encode())
    finally:
        os.close(fd)


class Crashy(WorkflowEntrypoint):
    """s2's first attempt hangs long enough for the test to kill its worker."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        def s1(ctx: Any) -> str:
            record(iid, "s1", ctx.attempt, "done")
            return "one"

        async def s2(ctx: Any) -> str:
            record(iid, "s2", ctx.attempt, "start")
            if ctx.attempt == 1:
                await asyncio.sleep(60)
            record(iid, "s2", ctx.attempt, "done")
            return "two"

        def s3(ctx: Any) -> str:
            record(iid, "s3", ctx.attempt, "done")
            return "three"

        a = await step.do("s1", s1)
        b = await step.do("s2", s2, retries={"limit": 3, "delay": "100 milliseconds"})
        c = await step.do("s3", s3)
        return [a, b, c]


class FiveSteps(WorkflowEntrypoint):
    """Five trivial steps, each recording that it ran."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id
        total = 0
        for i in range(5):
            def body(ctx: Any, i: int = i) -> int:
                record(iid, f"s{i}", ctx.attempt, "done")
                return i
            total += await step.do(f"s{i}", body)
        return total


def _count(instance: str, step: str, phase: str) -> int:
    path = os.environ["WARREN_TEST_EFFECTS"]
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.startswith(f"{instance}:{step}:")
                   and line.rstrip().endswith(f":{phase}"))


class SagaCrash(WorkflowEntrypoint):
    """Rollback of c, b, a; b's handler hangs on its first run so the test can kill it."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        def forward(name: str) -> Any:
            def body(ctx: Any) -> str:
                record(iid, name, ctx.attempt, "done")
                return name
            return body

        async def undo(ctx: Any) -> None:
            name = f"undo-{ctx.step.name}"
            first = _count(iid, name, "start") == 0
            record(iid, name, 0, "start")
            if ctx.step.name == "b" and first:
                await asyncio.sleep(60)
            record(iid, name, 0, "done")

        config = {"retries": {"limit": 3, "delay": "100 milliseconds"}}
        for name in ("a", "b", "c"):
            await step.do(name, forward(name), rollback=undo, rollback_config=config)

        def fail() -> None:
            raise RuntimeError("d failed")

        await step.do("d", fail, retries={"limit": 0})


class GatedCrash(WorkflowEntrypoint):
    """At most 3 at once; first attempts hold their slot long enough to be killed."""

    max_concurrency = 3

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        iid = event.instance_id

        async def work(ctx: Any) -> str:
            record(iid, "work", ctx.attempt, "start")
            await asyncio.sleep(5 if ctx.attempt == 1 else 0.2)
            record(iid, "work", ctx.attempt, "done")
            return "ok"

        return await step.do("work", work, retries={"limit": 3, "delay": "100 milliseconds"})
