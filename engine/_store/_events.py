"""Storing events sent to instances, once each (de-duplicated by message id)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from engine._history import FINISHED_STATUSES
from engine._store._schema import events, instances


async def store_event_txn(
    conn: AsyncConnection, workflow: str, instance_id: str, event_type: str, payload: str,
    message_id: str | None, now_ms: int,
) -> str | None:
    """Store an event for a live instance.

    Returns:
        The instance's status (the event is stored only if it is not finished), or ``None``
        if there is no such instance. A repeated ``message_id`` is stored once.
    """
    row = (await conn.execute(
        select(instances.c.pk, instances.c.status)
        .where(instances.c.workflow == workflow, instances.c.instance_id == instance_id)
    )).first()
    if row is None or row.status in FINISHED_STATUSES:
        return None if row is None else str(row.status)
    insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        insert_(events).values(
            instance_pk=row.pk, event_type=event_type, payload=payload, message_id=message_id,
            received_at_ms=now_ms,
        ).on_conflict_do_nothing()
    )
    return str(row.status)
