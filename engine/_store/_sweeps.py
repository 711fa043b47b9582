"""Queries of the sweeper: find instances whose wake-up may have been lost, and repair them.

Each query reads through a small index (timers by due time, running steps by heartbeat,
leases by expiry, queued instances by creation time), so a sweep costs what it finds, not
the size of the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy import and_, bindparam, delete, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import _history as h
from engine._store._dialects import conflict_insert
from engine._store._locking import joined, locked
from engine._store._schema import (
    engine_leases,
    events,
    instances,
    step_attempts,
    steps,
    timers,
)

Poke = tuple[str, str]  # (workflow, instance_id)

_LOST = orjson.dumps({
    "name": "WorkerLostError",
    "message": "the worker running this attempt stopped heartbeating (crashed or cut off)",
}).decode()


async def take_lease_txn(
    conn: AsyncConnection, name: str, owner: str, now_ms: int, ttl_ms: int
) -> bool:
    """Take or renew the named engine lease; True if ``owner`` holds it now."""
    c = engine_leases.c
    insert_ = conflict_insert(conn)
    await conn.execute(insert_(engine_leases).values(name=name, owner=None, expires_at_ms=0)
                       .on_conflict_do_nothing())
    result = await conn.execute(
        update(engine_leases)
        .where(c.name == name, or_(c.owner == owner, c.expires_at_ms < now_ms))
        .values(owner=owner, expires_at_ms=now_ms + ttl_ms)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


async def release_lease_txn(conn: AsyncConnection, name: str, owner: str) -> None:
    """Give up the named engine lease if ``owner`` holds it, for another worker to take now."""
    c = engine_leases.c
    await conn.execute(update(engine_leases).where(c.name == name, c.owner == owner)
                       .values(owner=None, expires_at_ms=0))


_PUSH_TIMER = (update(timers)
               .where(timers.c.instance_pk == bindparam("b_pk"),
                      timers.c.step_key == bindparam("b_key"))
               .values(due_at_ms=bindparam("b_due")))


async def overdue_timers_txn(
    conn: AsyncConnection, served: Sequence[str], now_ms: int, grace_ms: int, limit: int
) -> list[Poke]:
    """Instances with a timer overdue by more than ``grace_ms``, for a new wake-up.

    Each such timer is pushed back by as long as its wake-up is already overdue (at least
    ``grace_ms``), so the re-issues of one timer are ever further apart. A wake-up that is
    late because the workers are overloaded is queued, not lost: re-issuing it every
    ``grace_ms`` would add a turn per sweep to every late instance, just when the workers
    can least afford it, and make everything later still.
    """
    wake_at = func.coalesce(steps.c.wake_at_ms, timers.c.due_at_ms)
    rows = (await conn.execute(
        select(timers.c.instance_pk, timers.c.step_key, wake_at.label("wake_at_ms"),
               instances.c.workflow, instances.c.instance_id)
        .join(instances, instances.c.pk == timers.c.instance_pk)
        .outerjoin(steps, and_(steps.c.instance_pk == timers.c.instance_pk,
                               steps.c.step_key == timers.c.step_key))
        .where(timers.c.due_at_ms < now_ms - grace_ms, instances.c.workflow.in_(served))
        .order_by(timers.c.instance_pk, timers.c.step_key)
        .limit(limit)
        .with_for_update(of=timers)
    )).all()
    if rows:
        await conn.execute(_PUSH_TIMER, [
            {"b_pk": r.instance_pk, "b_key": r.step_key,
             "b_due": now_ms + max(grace_ms, now_ms - r.wake_at_ms)}
            for r in rows
        ])
    return [(r.workflow, r.instance_id) for r in rows]


async def stale_steps_txn(
    conn: AsyncConnection, served: Sequence[str], now_ms: int, heartbeat_timeout_ms: int,
    limit: int,
) -> list[Poke]:
    """Running steps whose heartbeat stopped: an attempt with no result is failed as lost
    (the turn retries it as a new attempt); an unapplied result gets its turn re-triggered."""
    s = steps.c
    rows = (await conn.execute(
        select(s.instance_pk, s.step_key, s.attempt, s.attempt_outcome,
               instances.c.workflow, instances.c.instance_id)
        .join(instances, instances.c.pk == s.instance_pk)
        .where(s.state == h.RUNNING, s.heartbeat_at_ms < now_ms - heartbeat_timeout_ms,
               instances.c.workflow.in_(served))
        .limit(limit)
    )).all()
    lost = [(r.instance_pk, r.step_key, r.attempt) for r in rows if r.attempt_outcome is None]
    if lost:
        # Failing an attempt changes history outside a turn: moving the fence on tells a
        # worker that kept the run in memory to replay it (see engine._resume_cache). The
        # instance rows are locked first, the lock order of every turn.
        changed = locked(instances, instances.c.pk.in_(sorted({pk for pk, _, _ in lost})))
        await conn.execute(update(instances).where(joined(instances, changed))
                           .values(fence=instances.c.fence + 1))
        doomed = locked(steps, tuple_(s.instance_pk, s.step_key, s.attempt).in_(lost),
                        s.attempt_outcome.is_(None))
        await conn.execute(
            update(steps).where(joined(steps, doomed))
            .values(attempt_outcome="error", error=_LOST, ended_at_ms=now_ms)
        )  # the turn that applies it writes it to the attempt log, as any failure
    if rows:
        seen = locked(steps, tuple_(s.instance_pk, s.step_key).in_(
            [(r.instance_pk, r.step_key) for r in rows]))
        await conn.execute(update(steps).where(joined(steps, seen)).values(heartbeat_at_ms=now_ms))
    return [(r.workflow, r.instance_id) for r in rows]


async def expired_leases(
    conn: AsyncConnection, served: Sequence[str], now_ms: int, limit: int
) -> list[Poke]:
    """Instances whose turn lease expired (the worker died mid-turn)."""
    c = instances.c
    rows = (await conn.execute(
        select(c.workflow, c.instance_id)
        .where(c.lease_owner.is_not(None), c.lease_expires_ms < now_ms,
               c.workflow.in_(served)).limit(limit)
    )).all()
    return [(r.workflow, r.instance_id) for r in rows]


async def unstarted_instances(
    conn: AsyncConnection, served: Sequence[str], now_ms: int, grace_ms: int, limit: int
) -> list[Poke]:
    """Queued instances older than ``grace_ms`` that no turn has picked up (their create
    message was lost, e.g. the creating client died between insert and publish)."""
    c = instances.c
    rows = (await conn.execute(
        select(c.workflow, c.instance_id)
        .where(c.status == h.QUEUED, c.admit_priority.is_(None),
               c.created_at_ms < now_ms - grace_ms, c.lease_owner.is_(None),
               c.workflow.in_(served))
        .order_by(c.created_at_ms)  # the oldest first, the same ones from sweep to sweep
        .limit(limit)
    )).all()
    return [(r.workflow, r.instance_id) for r in rows]


async def idle_slot_holders(
    conn: AsyncConnection, served: Sequence[str], limit: int
) -> list[Poke]:
    """Instances given a slot while queued or waiting whose wake-up was lost."""
    c = instances.c
    rows = (await conn.execute(
        select(c.workflow, c.instance_id)
        .where(c.slot.is_(True), c.status == h.QUEUED, c.lease_owner.is_(None),
               c.workflow.in_(served))
        .limit(limit)
    )).all()
    return [(r.workflow, r.instance_id) for r in rows]


def unique(pokes: Sequence[Poke]) -> list[Poke]:
    """Pokes without repeats, in first-seen order."""
    return list(dict.fromkeys(pokes))


async def expire_finished_txn(
    conn: AsyncConnection, served: Sequence[str], before_ms: int, limit: int
) -> int:
    """Delete instances that ended before ``before_ms`` (retention), with their history."""
    c = instances.c
    pks = list((await conn.execute(
        select(c.pk).where(c.ended_at_ms < before_ms, c.workflow.in_(served),
                           c.status.in_(h.FINISHED_STATUSES)).limit(limit)
    )).scalars())
    if not pks:
        return 0
    for table in (steps, step_attempts, events, timers):
        await conn.execute(delete(table).where(table.c.instance_pk.in_(pks)))
    await conn.execute(delete(instances).where(c.pk.in_(pks)))
    return len(pks)
