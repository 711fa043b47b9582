"""Storing events sent to instances, once each (de-duplicated by message id)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine._history import FINISHED_STATUSES
from engine._store._batching import padded
from engine._store._dialects import conflict_insert
from engine._store._rows import dedup_key
from engine._store._schema import events, instances
from sdk.errors import InstanceNotFoundError, InvalidTransitionError


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """An event for one instance of the workflow, as received."""

    instance_id: str
    event_type: str
    payload: str
    message_id: str | None


_STATUSES = select(instances.c.instance_id, instances.c.pk, instances.c.status).where(
    instances.c.workflow == bindparam("b_workflow"),
    instances.c.instance_id.in_(bindparam("b_ids", expanding=True)),
)


async def store_events_txn(
    conn: AsyncConnection, workflow: str, incoming: Sequence[IncomingEvent], now_ms: int,
) -> list[str | None]:
    """Store events for live instances: one read and one insert for the whole batch.

    Returns:
        Per event, its instance's status (the event is stored only if it is not finished),
        or ``None`` if there is no such instance. A repeated ``message_id`` is stored once.
    """
    ids = sorted({e.instance_id for e in incoming})
    found = {r.instance_id: r for r in await conn.execute(
        _STATUSES, {"b_workflow": workflow, "b_ids": padded(ids)})}
    rows = [
        {"instance_pk": found[e.instance_id].pk, "event_type": e.event_type,
         "payload": e.payload, "message_id": dedup_key(e.message_id, events.c.message_id),
         "received_at_ms": now_ms}
        for e in incoming
        if e.instance_id in found and found[e.instance_id].status not in FINISHED_STATUSES
    ]
    if rows:
        insert_ = conflict_insert(conn)
        await conn.execute(insert_(events).on_conflict_do_nothing(), rows)
    return [str(found[e.instance_id].status) if e.instance_id in found else None
            for e in incoming]


def check_takes_events(workflow: str, instance_id: str, status: str | None) -> None:
    """Raise unless an instance in ``status`` (as :func:`store_events_txn` returns it)
    takes events.

    Raises:
        InstanceNotFoundError: There is no such instance (``None``).
        InvalidTransitionError: It has finished.
    """
    if status is None:
        raise InstanceNotFoundError(f"no instance {instance_id!r} in workflow {workflow!r}")
    if status in FINISHED_STATUSES:
        raise InvalidTransitionError(
            f"instance {instance_id!r} is {status}; it takes no more events")
