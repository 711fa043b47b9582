"""Queries of the turn: take leases, load histories, commit decisions — batched across instances.

A worker advances many instances per round trip: one statement leases a batch, one loads
all their steps, one transaction commits all their decisions. Every write is guarded by the
lease owner token taken at acquisition (a fresh token per acquisition, so it is a fencing
token: a worker that lost its lease cannot commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, insert, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import _history as h
from engine._codec import decode_json, encode_json
from engine._replay import TurnOutcome
from engine._store._rows import step_record, step_values
from engine._store._schema import instances, step_attempts, steps, timers

_RUNNABLE = (h.QUEUED, h.STATUS_RUNNING, h.STATUS_WAITING)


@dataclass(slots=True)
class Leased:
    """Result of :func:`acquire_txn`."""

    snapshots: list[h.InstanceSnapshot]
    busy: list[str]


async def acquire_txn(
    conn: AsyncConnection, workflow: str, instance_ids: Sequence[str], owner: str,
    now_ms: int, lease_ms: int,
) -> Leased:
    """Lease the runnable instances among ``instance_ids``; flag the ones leased elsewhere.

    One statement: where the lease is free (or expired) it is taken and the fencing counter
    incremented; where another worker holds it, ``needs_turn`` is set so that the holder
    runs another turn before it lets go. Finished or unknown instances are not returned.
    """
    c = instances.c
    free = or_(c.lease_owner.is_(None), c.lease_expires_ms < now_ms)
    rows = (await conn.execute(
        update(instances)
        .where(c.workflow == workflow, c.instance_id.in_(list(instance_ids)),
               c.status.in_(_RUNNABLE))
        .values(
            fence=case((free, c.fence + 1), else_=c.fence),
            lease_owner=case((free, owner), else_=c.lease_owner),
            lease_expires_ms=case((free, now_ms + lease_ms), else_=c.lease_expires_ms),
            needs_turn=case((free, False), else_=True),
        )
        .returning(c.pk, c.instance_id, c.lease_owner, c.fence, c.status, c.params,
                   c.created_at_ms, c.started_at_ms)
    )).all()
    snapshots = [
        h.InstanceSnapshot(
            pk=r.pk, workflow=workflow, instance_id=r.instance_id,
            params=decode_json(r.params), status=r.status, created_at_ms=r.created_at_ms,
            fence=r.fence, started_at_ms=r.started_at_ms,
        )
        for r in rows if r.lease_owner == owner
    ]
    busy = [r.instance_id for r in rows if r.lease_owner != owner]
    if snapshots:
        by_pk = {s.pk: s for s in snapshots}
        step_rows = await conn.execute(
            select(steps).where(steps.c.instance_pk.in_(list(by_pk)))
            .order_by(steps.c.instance_pk, steps.c.start_seq)
        )
        for row in step_rows:
            by_pk[row.instance_pk].steps.append(step_record(row))
    return Leased(snapshots, busy)


async def commit_txn(
    conn: AsyncConnection, owner: str, results: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]],
    worker: str, now_ms: int,
) -> tuple[set[int], set[int]]:
    """Persist the outcomes of instances still leased by ``owner`` and release their leases.

    Returns:
        The pks committed, and the pks whose ``needs_turn`` was set meanwhile (they need
        another turn).
    """
    pks = [snap.pk for snap, _ in results]
    released = (await conn.execute(
        update(instances)
        .where(instances.c.pk.in_(pks), instances.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_ms=None)
        .returning(instances.c.pk, instances.c.needs_turn)
    )).all()
    held = {r.pk for r in released}
    again = {r.pk for r in released if r.needs_turn}
    kept = [(snap, out) for snap, out in results if snap.pk in held]
    if not kept:
        return held, again
    await _write_instances(conn, kept, now_ms)
    inserted = [(snap.pk, r) for snap, out in kept for r in out.inserted]
    if inserted:
        await conn.execute(insert(steps), [
            {"instance_pk": pk, "step_key": r.key, **step_values(r), **_runner(r, worker, now_ms)}
            for pk, r in inserted
        ])
    updated = [(snap.pk, r) for snap, out in kept for r in out.updated]
    if updated:
        await conn.execute(
            update(steps).where(steps.c.instance_pk == bindparam("b_pk"),
                                steps.c.step_key == bindparam("b_key")),
            [{"b_pk": pk, "b_key": r.key, **step_values(r), **_runner(r, worker, now_ms)}
             for pk, r in updated],
        )
    attempts = [(snap.pk, a) for snap, out in kept for a in out.attempts]
    if attempts:
        await conn.execute(insert(step_attempts), [
            {"instance_pk": pk, "step_key": a.key, "attempt": a.attempt,
             "started_at_ms": now_ms, "ended_at_ms": None, "success": None, "error": None}
            for pk, a in attempts
        ])
    cleared = [(snap.pk, key) for snap, out in kept
               for key in [*out.timers_cleared, *out.timers_set]]
    if cleared:
        await conn.execute(delete(timers).where(
            tuple_(timers.c.instance_pk, timers.c.step_key).in_(cleared)
        ))
    timer_rows = [{"instance_pk": snap.pk, "step_key": key, "due_at_ms": due}
                  for snap, out in kept for key, due in out.timers_set.items()]
    if timer_rows:
        await conn.execute(insert(timers), timer_rows)
    return held, again


def _runner(record: h.StepRecord, worker: str, now_ms: int) -> dict[str, Any]:
    running = record.state == h.RUNNING and record.attempt_outcome is None
    return {"worker": worker if running else None, "heartbeat_at_ms": now_ms if running else None}


async def _write_instances(
    conn: AsyncConnection, kept: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]], now_ms: int
) -> None:
    rows = []
    for snap, out in kept:
        rows.append({
            "b_pk": snap.pk, "status": out.status,
            "output": None if out.output is None else encode_json(out.output, what="output"),
            "error": None if out.error is None else encode_json(out.error, what="error"),
            "started_at_ms": snap.started_at_ms or now_ms,
            "ended_at_ms": now_ms if out.finished else None,
        })
    await conn.execute(
        update(instances).where(instances.c.pk == bindparam("b_pk")), rows
    )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one step attempt ended, as the runner reports it."""

    instance_pk: int
    key: str
    attempt: int
    ok: bool
    output: str | None
    error: str | None
    ended_at_ms: int


async def record_attempts_txn(conn: AsyncConnection, results: Sequence[AttemptResult]) -> None:
    """Store ended attempts. An attempt no longer current (superseded, or the instance was
    reset) matches no row and its result is dropped: the turn already moved on."""
    s = steps.c
    await conn.execute(
        update(steps).where(
            s.instance_pk == bindparam("b_pk"), s.step_key == bindparam("b_key"),
            s.attempt == bindparam("b_attempt"), s.state == h.RUNNING,
            s.attempt_outcome.is_(None),
        ).values(
            attempt_outcome=bindparam("b_outcome"), output=bindparam("b_output"),
            error=bindparam("b_error"), ended_at_ms=bindparam("b_ended"),
            heartbeat_at_ms=bindparam("b_ended"),
        ),
        [_attempt_params(r) for r in results],
    )
    a = step_attempts.c
    await conn.execute(
        update(step_attempts).where(
            a.instance_pk == bindparam("b_pk"), a.step_key == bindparam("b_key"),
            a.attempt == bindparam("b_attempt"), a.ended_at_ms.is_(None),
        ).values(ended_at_ms=bindparam("b_ended"), success=bindparam("b_ok"),
                 error=bindparam("b_error")),
        [_attempt_params(r) for r in results],
    )


def _attempt_params(r: AttemptResult) -> dict[str, Any]:
    return {"b_pk": r.instance_pk, "b_key": r.key, "b_attempt": r.attempt,
            "b_outcome": "ok" if r.ok else "error", "b_output": r.output, "b_error": r.error,
            "b_ended": r.ended_at_ms, "b_ok": r.ok}


async def heartbeat_txn(
    conn: AsyncConnection, running: Sequence[tuple[int, str, int]], now_ms: int
) -> None:
    """Refresh the heartbeat of attempts this worker is executing: (pk, key, attempt)."""
    if not running:
        return
    s = steps.c
    await conn.execute(
        update(steps).where(
            tuple_(s.instance_pk, s.step_key, s.attempt).in_(list(running)),
            and_(s.state == h.RUNNING, s.attempt_outcome.is_(None)),
        ).values(heartbeat_at_ms=now_ms)
    )
