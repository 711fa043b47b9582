"""An outcome that cannot be stored fails its own instance, and only that one."""

from __future__ import annotations

from typing import Any

import pytest

import engine._store._turns as turns_store
from sdk import LimitExceededError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from tests.stacks import Stack


class Output(WorkflowEntrypoint):
    name = "sized-output"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("make", lambda: event.payload["output"])


async def _six(stack: Stack, poison_at: int) -> list[Any]:
    async with stack.running([Output]) as client:
        # Created together, so their turns share batches (and transactions).
        instances = await client.workflow("sized-output").create_batch([
            {"id": f"out-{i}", "params": {"output": "poison" if i == poison_at else "x" * i}}
            for i in range(6)
        ])
        return [await inst.wait_for_status(("errored" if inst.id == f"out-{poison_at}"
                                            else "complete"), timeout=20)
                for inst in instances]


async def test_an_outcome_the_store_refuses_fails_its_instance_not_its_batch(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands for any value the store cannot take although replay accepted it.
    encode = turns_store.encode_json

    def refusing(value: Any, *, what: str, **kw: Any) -> str:
        if value == "poison":
            raise LimitExceededError(f"{what} refused by the test")
        return encode(value, what=what, **kw)

    monkeypatch.setattr(turns_store, "encode_json", refusing)
    statuses = await _six(stack, poison_at=3)
    for i, status in enumerate(statuses):
        if i == 3:
            assert status.error is not None and status.error["name"] == "EngineError"
            assert "could not be stored" in status.error["message"]
        else:
            assert status.output == "x" * i
