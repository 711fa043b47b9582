"""A saga: debit account A, credit account B, notify — undone in reverse when a step fails.

::

    warren dev examples/bank_transfer.py
    warren trigger bank-transfer '{"from": "alice", "to": "bob", "amount": 50}'
    warren trigger bank-transfer '{"from": "alice", "to": "frozen-account", "amount": 50}'
    warren instances describe bank-transfer latest

The second transfer fails at "credit b" (the receiving account is frozen, a
``NonRetryableError``), so the workflow is about to fail; before the instance ends
``errored``, the engine runs the rollback handlers of the steps that started, newest first:
"credit b" has nothing to undo, then "debit a" refunds alice. Each handler is a durable step
(retried, recorded). Handlers get ``ctx.output`` (the step's persisted result, or None),
``ctx.error`` and ``ctx.step``; they use idempotency keys so a retried handler is harmless.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sdk import NonRetryableError, RollbackContext, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

FROZEN = {"frozen-account"}


class Bank:
    """A simulated bank that applies each idempotency key at most once."""

    def __init__(self) -> None:
        self.balances: dict[str, float] = {"alice": 500.0, "bob": 100.0}
        self.applied: dict[str, dict[str, Any]] = {}

    async def move(self, key: str, account: str, delta: float) -> dict[str, Any]:
        await asyncio.sleep(0.1)
        if key in self.applied:
            return self.applied[key]
        if account in FROZEN:
            raise NonRetryableError(f"account {account!r} is frozen")
        self.balances[account] = self.balances.get(account, 0.0) + delta
        self.applied[key] = {
            "account": account,
            "delta": delta,
            "key": key,
            "balance": self.balances[account],
        }
        return self.applied[key]


bank = Bank()


class BankTransfer(WorkflowEntrypoint):
    """Params: ``{"from": str, "to": str, "amount": number}``."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p = {"from": "alice", "to": "bob", "amount": 50, **(event.payload or {})}
        iid = event.instance_id

        @step.do("debit a", retries={"limit": 3, "delay": "1 second"})
        async def debit() -> dict[str, Any]:
            return await bank.move(f"{iid}:debit", p["from"], -p["amount"])

        @debit.rollback
        async def undo_debit(ctx: RollbackContext) -> None:
            # ctx.output is None if the debit never completed: then there is nothing to undo.
            if ctx.output is not None:
                await bank.move(f"{iid}:undo-debit", p["from"], p["amount"])

        @step.do("credit b", retries={"limit": 3, "delay": "1 second"})
        async def credit() -> dict[str, Any]:
            return await bank.move(f"{iid}:credit", p["to"], p["amount"])

        @credit.rollback
        async def undo_credit(ctx: RollbackContext) -> None:
            if ctx.output is not None:
                await bank.move(f"{iid}:undo-credit", p["to"], -p["amount"])

        debited = await debit()
        credited = await credit()
        notice = await step.do(
            "notify", lambda: f"moved {p['amount']} from {p['from']} to {p['to']}"
        )
        return {"debit": debited, "credit": credited, "notice": notice}
