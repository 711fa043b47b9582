"""Lifecycle events: what subscribers of the ``lifecycle`` exchange receive (API.md §4)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from broker import OutgoingMessage
from engine._clock import now_ms
from engine._settings import check_lifecycle_level
from engine._store._instances import iso


def _message(
    workflow: str, instance_id: str, kind: str, details: dict[str, Any]
) -> OutgoingMessage:
    """A lifecycle event (API.md §4) for subscribers; not durable."""
    body = {"kind": kind, "workflow": workflow, "instance_id": instance_id,
            "timestamp": iso(now_ms()), **details}
    return OutgoingMessage("lifecycle", f"{workflow}.{instance_id}.{kind}", orjson.dumps(body))


@dataclass(frozen=True, slots=True)
class LifecycleEvents:
    """Which lifecycle events a process publishes (``Settings.lifecycle_events``).

    ``all`` (the default) publishes every kind; ``instance`` only the ``instance.*`` ones (one
    per status change, however many steps the instance runs); ``none`` publishes nothing. RabbitMQ
    routes every event through the topic exchange even when no queue is bound to it, and
    that is work: at three events per step, two thirds of its CPU per step in ``throughput``
    (benchmarks/README.md). A deployment that follows no step live can leave them out.
    """

    level: str = "all"

    def __post_init__(self) -> None:
        check_lifecycle_level(self.level)

    def wants(self, kind: str) -> bool:
        """Whether an event of ``kind`` is published."""
        if self.level == "all":
            return True
        return self.level == "instance" and kind.startswith("instance.")

    def messages(
        self, workflow: str, instance_id: str, events: Iterable[tuple[str, dict[str, Any]]]
    ) -> list[OutgoingMessage]:
        """The messages of those of ``events`` (kind, details) that are published."""
        if self.level == "none":
            return []
        return [_message(workflow, instance_id, kind, details)
                for kind, details in events if self.wants(kind)]
