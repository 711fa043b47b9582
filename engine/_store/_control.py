"""Control commands from clients: pause, resume, terminate, restart.

A command is validated and recorded atomically with one guarded ``UPDATE`` (so concurrent
commands cannot both succeed from a state only one of them allows); the next turn applies
it under the instance's lease, like every other change of an instance.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import _history as h
from engine._store._schema import instances
from sdk.errors import InstanceNotFoundError, InvalidTransitionError

_LIVE = (h.QUEUED, h.STATUS_RUNNING, h.STATUS_WAITING, h.PAUSED, h.WAITING_FOR_PAUSE)


async def control_txn(
    conn: AsyncConnection, workflow: str, instance_id: str, op: str,
    from_step: tuple[str, int] | None = None, rollback: bool = False, _retries: int = 3,
) -> bool:
    """Record ``op`` for the instance.

    Returns:
        True if a turn must apply it, False if it was already in effect (idempotent no-op).

    Raises:
        InstanceNotFoundError: no such instance.
        InvalidTransitionError: the instance's status does not allow ``op``.
    """
    c = instances.c
    where = (c.workflow == workflow, c.instance_id == instance_id)
    row = (await conn.execute(select(c.status, c.paused, c.control).where(*where))).first()
    if row is None:
        raise InstanceNotFoundError(f"no instance {instance_id!r} in workflow {workflow!r}")
    status = row.status
    values: dict[str, Any]
    allowed: tuple[str, ...] = _LIVE
    if op in ("pause", "resume"):
        if status in (h.COMPLETE, h.ERRORED, h.TERMINATED):
            raise InvalidTransitionError(f"cannot {op} instance {instance_id!r}: it is {status}")
        if row.paused == (op == "pause"):
            return False
        values = {"paused": op == "pause"}
    elif op == "terminate":
        if status == h.TERMINATED:
            return False
        if status not in _LIVE:
            raise InvalidTransitionError(
                f"cannot terminate instance {instance_id!r}: it is already {status}")
        values = {"control": orjson.dumps({"op": "terminate", "rollback": rollback}).decode()}
    elif op == "restart":
        allowed = (*_LIVE, h.COMPLETE, h.ERRORED, h.TERMINATED)
        values = {"control": orjson.dumps(
            {"op": "restart", "from_step": list(from_step) if from_step else None}).decode()}
        if status in (h.COMPLETE, h.ERRORED, h.TERMINATED):
            values["status"] = h.QUEUED  # so that a turn takes it again
    else:
        raise ValueError(f"unknown control op {op!r}")
    done = await conn.execute(
        update(instances).where(*where, c.status.in_(allowed)).values(**values)
    )
    if done.rowcount == 1:  # type: ignore[attr-defined]
        return True
    # A turn changed the status between our read and our write: decide again on the new one.
    if _retries == 0:
        raise InvalidTransitionError(f"instance {instance_id!r} keeps changing status; retry")
    return await control_txn(conn, workflow, instance_id, op, from_step, rollback, _retries - 1)
