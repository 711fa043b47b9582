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
