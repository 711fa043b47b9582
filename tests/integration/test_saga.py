"""Acceptance of saga rollbacks on real stacks (issue: saga rollbacks)."""

from __future__ import annotations

import asyncio
from typing import Any

from sdk import Client, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from sdk.errors import NonRetryableError
from tests.helpers import eventually
from tests.stacks import Stack

LEDGER: list[str] = []


class BankTransfer(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        amount = event.payload["amount"]

        @step.do("debit A")
        async def debit() -> dict[str, Any]:
            LEDGER.append(f"A-{amount}")
            return {"account": "A", "debited": amount}

        @debit.rollback
        async def refund(ctx: Any) -> None:
            assert ctx.output == {"account": "A", "debited": amount}
            LEDGER.append(f"A+{amount}")

        @step.do("credit B", retries={"limit": 2, "delay": "100 milliseconds"})
        async def credit() -> None:
            raise ConnectionError("bank B is unreachable")

        @credit.rollback
        async def uncredit(ctx: Any) -> None:
            assert ctx.output is None  # it never succeeded
            LEDGER.append("B-check")

        await debit()
        await credit()
        await step.do("notify", lambda: LEDGER.append("notified"))


async def test_bank_transfer_refunds_a_when_credit_fails(stack: Stack) -> None:
    LEDGER.clear()
    async with stack.running([BankTransfer]) as client, _events(client) as seen:
        inst = await client.workflow("bank-transfer").create(params={"amount": 50})
        st = await inst.wait_for_status("errored", timeout=20)
        await eventually(lambda: any(e["kind"] == "rollback.finished" for e in seen), timeout=5)
    assert st.error == {"name": "ConnectionError", "message": "bank B is unreachable"}
    assert st.rollback == {"outcome": "complete", "error": None}
    assert LEDGER == ["A-50", "B-check", "A+50"]
    rollbacks = [s for s in st.steps if s["type"] == "rollback"]
    assert [s["name"] for s in rollbacks] == ["credit B", "debit A"]
    assert all(s["success"] for s in rollbacks)
    kinds = [e["kind"] for e in seen if e["kind"].startswith("rollback")]
    assert kinds[0] == "rollback.started" and kinds[-1] == "rollback.finished"
    assert kinds.count("rollback.step.succeeded") == 2
    assert kinds.index("rollback.started") < kinds.index("rollback.step.succeeded")


class Approve(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def undo(ctx: Any) -> None:
            LEDGER.append(f"undo {ctx.step.name}")

        await step.do("reserve", lambda: LEDGER.append("reserve"), rollback=undo)
        await step.do("charge", lambda: LEDGER.append("charge"), rollback=undo)
        await step.wait_for_event("approval", "approval")
        await step.do("ship", lambda: LEDGER.append("ship"), rollback=undo)


async def test_terminate_with_rollback_compensates_then_ends_terminated(stack: Stack) -> None:
    LEDGER.clear()
    async with stack.running([Approve]) as client:
        plain = await client.workflow("approve").create()
        await plain.wait_for_status("waiting", timeout=10)
        await plain.terminate()  # without rollback: nothing is compensated
        await plain.wait_for_status("terminated", timeout=10)
        assert LEDGER == ["reserve", "charge"]
        LEDGER.clear()
        inst = await client.workflow("approve").create()
        await inst.wait_for_status("waiting", timeout=10)
        await inst.terminate(rollback=True)
        st = await inst.wait_for_status("terminated", timeout=10)
    assert LEDGER == ["reserve", "charge", "undo charge", "undo reserve"]
    assert st.rollback == {"outcome": "complete", "error": None}
    assert (await _status(stack, plain.id)).rollback is None


class Rebook(WorkflowEntrypoint):
    """Books (waiting for the test's go-ahead), then pays: declined while ``DECLINE``."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def book() -> str:
            await BOOKING_ALLOWED.wait()
            return "booked"

        async def pay() -> None:
            if DECLINE:
                raise NonRetryableError("card declined")

        await step.do("book", book, rollback=lambda ctx: LEDGER.append("unbook"))
        await step.do("pay", pay)


BOOKING_ALLOWED = asyncio.Event()
DECLINE = True


async def test_restart_clears_the_rollback_of_the_run_it_discards(stack: Stack) -> None:
    global DECLINE
    LEDGER.clear()
    BOOKING_ALLOWED.set()
    DECLINE = True
    async with stack.running([Rebook]) as client:
        inst = await client.workflow("rebook").create()
        st = await inst.wait_for_status("errored", timeout=10)
        assert st.rollback == {"outcome": "complete", "error": None}
        assert LEDGER == ["unbook"]
        BOOKING_ALLOWED.clear()
        DECLINE = False
        await inst.restart()
        # The new run is inside its first step: nothing of the old run's rollback remains.
        async def booking() -> Any:
            st = await inst.status()
            return st if st.status == "running" and st.steps else None

        running = await eventually(booking, timeout=10)
        assert running.rollback is None
        BOOKING_ALLOWED.set()
        st = await inst.wait_for_status("complete", timeout=10)
    assert st.rollback is None


async def _status(stack: Stack, instance_id: str) -> Any:
    async with stack.client() as client:
        return await (await client.workflow("approve").get(instance_id)).status()


class _Collector:
    def __init__(self, client: Client) -> None:
        self.subscription = client.subscribe()
        self.seen: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> list[dict[str, Any]]:
        events = await self.subscription.__aenter__()  # bound from here on

        async def collect() -> None:
            async for event in events:
                self.seen.append(event)
        self.task = asyncio.create_task(collect())
        return self.seen

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.subscription.aclose()


def _events(client: Client) -> _Collector:
    return _Collector(client)
