"""Lifecycle events: what subscribers of the ``lifecycle`` exchange receive (API.md §4)."""

from __future__ import annotations

from typing import Any

import orjson

from broker import OutgoingMessage
from engine._clock import now_ms
from engine._store._instances import iso


def lifecycle_message(
    workflow: str, instance_id: str, kind: str, details: dict[str, Any]
) -> OutgoingMessage:
    """A lifecycle event (API.md §4) for subscribers; not durable."""
    body = {"kind": kind, "workflow": workflow, "instance_id": instance_id,
            "timestamp": iso(now_ms()), **details}
    return OutgoingMessage("lifecycle", f"{workflow}.{instance_id}.{kind}", orjson.dumps(body))
