"""Order processing: inventory → payment (flaky, retried) → email → database.

Run it once, in this process, with nothing else installed or running::

    warren run examples/order_processing.py

or serve it and trigger instances over HTTP::

    warren dev examples/order_processing.py
    warren trigger order-processing '{"order_id": "A-1001", "items": [{"sku": "mug", "qty": 2}]}'
    warren instances describe order-processing latest --watch

Every step simulates work with a short sleep. The payment gateway fails its first two calls
for every order, so the run shows retries with exponential backoff before it succeeds.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from sdk import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

PRICES = {"mug": 12.5, "t-shirt": 20.0, "sticker": 2.0}
DEFAULT_ORDER = {
    "order_id": "A-1001",
    "email": "ana@example.com",
    "items": [{"sku": "mug", "qty": 2}, {"sku": "sticker", "qty": 5}],
}

# Simulated payment gateway: counts calls per order so that it fails twice, then succeeds.
_gateway_calls: dict[str, int] = {}


async def reserve_inventory(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Reserve stock for every line; an unknown SKU can never succeed, so don't retry it."""
    await asyncio.sleep(0.2)
    unknown = [i["sku"] for i in items if i["sku"] not in PRICES]
    if unknown:
        raise NonRetryableError(f"unknown SKU(s): {', '.join(unknown)}")
    total = sum(PRICES[i["sku"]] * i["qty"] for i in items)
    return {"reservation": f"R-{random.randint(1000, 9999)}", "total": round(total, 2)}


async def charge_card(order_id: str, amount: float) -> dict[str, Any]:
    """Charge the customer; the gateway times out on the first two calls."""
    await asyncio.sleep(0.3)
    _gateway_calls[order_id] = _gateway_calls.get(order_id, 0) + 1
    if _gateway_calls[order_id] <= 2:
        raise ConnectionError("payment gateway timed out")
    return {"payment_id": f"P-{random.randint(100000, 999999)}", "amount": amount}


async def send_confirmation(email: str, order_id: str) -> str:
    """Email the customer (simulated)."""
    await asyncio.sleep(0.1)
    return f"sent to {email}"


async def save_order(order_id: str, payment_id: str) -> dict[str, str]:
    """Record the paid order (simulated database write)."""
    await asyncio.sleep(0.1)
    return {"order_id": order_id, "payment_id": payment_id, "state": "paid"}


class OrderProcessing(WorkflowEntrypoint):
    """Params: ``{"order_id": str, "email": str, "items": [{"sku", "qty"}]}`` (all optional)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        order = {**DEFAULT_ORDER, **(event.payload or {})}
        order_id = order["order_id"]

        reservation = await step.do("reserve inventory", lambda: reserve_inventory(order["items"]))

        payment = await step.do(
            "charge payment",
            lambda: charge_card(order_id, reservation["total"]),
            retries={"limit": 4, "delay": "500 milliseconds", "backoff": "exponential"},
            timeout="30 seconds",
        )

        receipt = await step.do(
            "send confirmation email", lambda: send_confirmation(order["email"], order_id)
        )

        record = await step.do(
            "save to database", lambda: save_order(order_id, payment["payment_id"])
        )

        return {"order": record, "total": reservation["total"], "email": receipt}
