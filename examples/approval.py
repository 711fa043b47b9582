"""Human in the loop: an expense report waits for an ``approval`` event before paying out.

::

    warren dev examples/approval.py
    warren trigger expense-approval '{"amount": 240, "employee": "ana"}' --id EXP-7
    warren instances describe expense-approval EXP-7        # status: waiting
    warren send-event expense-approval EXP-7 approval '{"approved": true, "by": "lee"}'
    warren instances describe expense-approval EXP-7        # status: complete

The wait holds no worker and no connection: the instance sleeps in the database until the
event arrives (over HTTP, from the CLI, or published to the ``warren.events`` exchange) or
the timeout passes. An event sent before the instance reaches the wait is kept for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sdk import WorkflowEntrypoint, WorkflowEvent, WorkflowStep, WorkflowTimeoutError


async def notify_approver(report: dict[str, Any]) -> str:
    """Ask a manager to approve (simulated chat message)."""
    await asyncio.sleep(0.1)
    return f"asked a manager to approve {report['report_id']} ({report['amount']} EUR)"


async def pay_out(report: dict[str, Any]) -> dict[str, Any]:
    """Reimburse the employee (simulated bank transfer)."""
    await asyncio.sleep(0.2)
    return {"paid": report["amount"], "to": report["employee"]}


class ExpenseApproval(WorkflowEntrypoint):
    """Params: ``{"report_id", "amount", "employee"}``; event ``approval``:
    ``{"approved": bool, "by": str}``."""

    name = "expense-approval"

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        report = {
            "report_id": event.instance_id,
            "amount": 100,
            "employee": "ana",
            **(event.payload or {}),
        }
        await step.do("notify approver", lambda: notify_approver(report))
        try:
            decision = await step.wait_for_event("wait for approval", "approval", timeout="7 days")
        except WorkflowTimeoutError:
            return {"report_id": report["report_id"], "outcome": "expired"}
        if not decision.payload.get("approved"):
            return {
                "report_id": report["report_id"],
                "outcome": "rejected",
                "by": decision.payload.get("by"),
            }
        payment = await step.do("pay out", lambda: pay_out(report))
        return {
            "report_id": report["report_id"],
            "outcome": "paid",
            "by": decision.payload.get("by"),
            "payment": payment,
        }
