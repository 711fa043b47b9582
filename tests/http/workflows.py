"""Workflows served by the HTTP and CLI tests (in process, and by ``warren dev`` subprocesses)."""

from __future__ import annotations

import gc
import time
from typing import Any

from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep


class Greet(WorkflowEntrypoint):
    """One step; its output carries the time it ran, so a restart is visible."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        name = (event.payload or {}).get("name", "world")
        ran_at = await step.do("greet", lambda: time.time())
        return {"greeting": f"hello {name}", "ran_at": ran_at}


class Approval(WorkflowEntrypoint):
    """Waits for an ``approval`` event and returns its payload."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        decision = await step.wait_for_event("wait for approval", "approval", timeout="1 hour")
        return {"approved_by": decision.payload}


class Sleepy(WorkflowEntrypoint):
    """A step, a durable sleep of ``params["seconds"]`` (default 2), another step."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        seconds = float((event.payload or {}).get("seconds", 2))
        before = await step.do("before", lambda: "before")
        await step.sleep("nap", seconds)
        after = await step.do("after", lambda: "after")
        return [before, after]


class Collector(WorkflowEntrypoint):
    """Reports how the serving process's garbage collector is set (the CLI tunes it)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def read() -> dict[str, int]:
            return {"frozen": gc.get_freeze_count(), "young_threshold": gc.get_threshold()[0]}

        return await step.do("read the collector", read)
