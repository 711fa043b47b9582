"""Queries of the turn: take leases, load histories, commit decisions — batched across instances.

A worker advances many instances per round trip: one statement leases a batch, one loads
all their steps, one transaction commits all their decisions. Every write is guarded by the
lease owner token taken at acquisition (a fresh token per acquisition, so it is a fencing
token: a worker that lost its lease cannot commit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from engine import _clock as clock
from engine import _history as h
from engine._codec import decode_json, encode_json
from engine._replay import TurnOutcome
from engine._store._batching import padded
from engine._store._dialects import CONFLICT_INSERTS
from engine._store._gates import (
    NEW,
    WOKEN,
    SlotRequest,
    count_slots_txn,
    settle_txn,
    wants_slot,
)
from engine._store._locking import joined, locked, sorted_params
from engine._store._rows import STEP_RECORD_COLUMNS, step_record, step_values
from engine._store._schema import events, instances, step_attempts, steps, timers

RUNNABLE = (h.QUEUED, h.STATUS_RUNNING, h.STATUS_WAITING, h.PAUSED, h.WAITING_FOR_PAUSE)
# "abandoned" marks the error as the engine's (a step's own exception may share the name):
# such an attempt never fails its step (engine._replay).
_ABANDONED = orjson.dumps({
    "name": "AttemptAbandonedError",
    "message": "the instance finished while this attempt ran; restarted, the step is retried",
    "abandoned": True,
}).decode()

# The statements of every turn, built once: SQLAlchemy then reuses their cache keys instead
# of rebuilding and hashing the expression trees at every execution.
_i = instances.c
_FREE = or_(_i.lease_owner.is_(None),
            _i.lease_expires_ms < bindparam("b_now", type_=_i.lease_expires_ms.type))


def _acquire(take_lease: bool) -> Executable:
    """The statement that locks a batch's runnable rows, increments the fence of those whose
    lease is free (or expired), and flags the others ``needs_turn``; with ``take_lease`` it
    also writes a lease (owner and expiry) into the free ones, otherwise it clears an
    expired one."""
    owner = bindparam("b_owner", type_=_i.lease_owner.type) if take_lease else null()
    expires = bindparam("b_expires", type_=_i.lease_expires_ms.type) if take_lease else null()
    return (
        update(instances)
        .where(joined(instances, locked(
            instances, _i.workflow == bindparam("b_workflow"),
            _i.instance_id.in_(bindparam("b_ids", expanding=True)), _i.status.in_(RUNNABLE))))
        .values(
            fence=case((_FREE, _i.fence + 1), else_=_i.fence),
            lease_owner=case((_FREE, owner), else_=_i.lease_owner),
            lease_expires_ms=case((_FREE, expires), else_=_i.lease_expires_ms),
            needs_turn=case((_FREE, False), else_=True),
        )
        .returning(_i.pk, _i.instance_id, _i.lease_owner, _i.fence, _i.status, _i.params,
                   _i.created_at_ms, _i.started_at_ms, _i.paused, _i.control, _i.slot,
                   _i.admit_priority,
                   # Most turns have no pending event: this spares them the events query.
                   # (The table is named: SQLite's RETURNING drops qualifiers, and a bare
                   # "pk" in the subquery would be the event's.)
                   exists().where(events.c.instance_pk == literal_column(f"{instances.name}.pk"),
                                  events.c.consumed_by.is_(None)).label("has_events"))
    )


_LEASE = _acquire(take_lease=True)
_LOCK = _acquire(take_lease=False)
_LOAD_STEPS = (select(steps.c.instance_pk, *(steps.c[name] for name in STEP_RECORD_COLUMNS))
               .where(steps.c.instance_pk.in_(bindparam("b_pks", expanding=True)))
               .order_by(steps.c.instance_pk, steps.c.start_seq))
_LOAD_EVENTS = (select(events).where(events.c.instance_pk.in_(bindparam("b_pks", expanding=True)),
                                     events.c.consumed_by.is_(None))
                .order_by(events.c.instance_pk, events.c.pk))
_s = steps.c
_RECORD_STEP = update(steps).where(
    _s.instance_pk == bindparam("b_pk"), _s.step_key == bindparam("b_key"),
    _s.attempt_token == bindparam("b_token"), _s.state == h.RUNNING,
    _s.attempt_outcome.is_(None),
).values(
    attempt_outcome=bindparam("b_outcome"), output=bindparam("b_output"),
    error=bindparam("b_error"), ended_at_ms=bindparam("b_ended"),
    heartbeat_at_ms=bindparam("b_ended"),
)
def _upsert_steps(insert_: Callable[[Table], Any]) -> Executable:
    stmt = insert_(steps)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=[_s.instance_pk, _s.step_key],
        # A turn writes every column of the rows it writes (``step_values`` and ``_runner``);
        # a row written without a new attempt keeps the token it has.
        set_={**{c.name: stmt.excluded[c.name] for c in steps.c
                 if not c.primary_key and c.name != "attempt_token"},
              "attempt_token": func.coalesce(stmt.excluded.attempt_token, _s.attempt_token)},
    )
    return upsert


_UPSERT_STEPS = {name: _upsert_steps(insert_) for name, insert_ in CONFLICT_INSERTS.items()}
# A failure is logged once, by the turn that moves its step on; should a replay apply the
# same stored failure again, the row it logged stands.
_LOG_FAILED_ATTEMPTS = {name: insert_(step_attempts).on_conflict_do_nothing()
                        for name, insert_ in CONFLICT_INSERTS.items()}
_UPDATE_INSTANCE = update(instances).where(_i.pk == bindparam("b_pk"))


@dataclass(slots=True)
class Leased:
    """Result of :func:`acquire_txn`.

    Attributes:
        snapshots: Instances leased, with history loaded, to replay.
        busy: Ids leased by another worker (flagged ``needs_turn``).
        restarted: Instances a pending ``restart`` reset in this transaction.
        resumable: Pks of snapshots leased at the fence the caller knew (``known_fences``),
            with no command pending and not paused: their steps were not loaded.
    """

    snapshots: list[h.InstanceSnapshot]
    busy: list[str]
    restarted: list[h.InstanceSnapshot] = field(default_factory=list)
    resumable: set[int] = field(default_factory=set)


async def acquire_txn(
    conn: AsyncConnection, workflow: str, instance_ids: Sequence[str], owner: str,
    now_ms: int, lease_ms: int, results: Sequence[h.AttemptResult] = (),
    known_fences: Mapping[int, int] | None = None, *, lease: bool = True,
    decided_ahead: Set[int] = frozenset(),
) -> Leased:
    """Lease the runnable instances among ``instance_ids``; flag the ones leased elsewhere.

    One statement: where the lease is free (or expired) it is taken and the fencing counter
    incremented; where another worker holds it, ``needs_turn`` is set so that the holder
    runs another turn before it lets go. Finished or unknown instances are not returned.
    Without ``lease``, the turn commits in this same transaction: its row locks already
    exclude every other turn until then, and a lease written now would be invisible to
    everyone else and only cost the commit a write to clear it, so none is written.
    ``results`` (ended attempts of these instances) are stored after the instance rows are
    locked and before the histories are loaded: instance rows before step rows is the lock
    order of every transaction that writes both, so this one cannot deadlock with a commit.
    ``known_fences`` maps instance pks to the fence at which the caller holds their history
    in memory (see ``engine._resume_cache``); leased at that fence, their steps are not loaded.
    Among those, runs that already decided this turn (``decided_ahead``, see
    ``engine._store._decided_turns``) count as resumable only if the instance is as they
    saw it: running with a slot, no event waiting.
    """
    rows = (await conn.execute(_LEASE if lease else _LOCK, {
        "b_workflow": workflow, "b_ids": padded(instance_ids), "b_now": now_ms,
        **({"b_owner": owner, "b_expires": now_ms + lease_ms} if lease else {}),
    })).all()
    taker = owner if lease else None  # what the lease owner of a row taken here reads
    mine = [r for r in rows if r.lease_owner == taker]
    known = known_fences or {}
    resumable = {r.pk for r in mine if known.get(r.pk) == r.fence
                 and r.control is None and not r.paused
                 and (r.pk not in decided_ahead or _as_decided(r))}
    if results:
        await record_attempts_txn(conn, results, applied_in_memory=resumable)
    snapshots = [
        h.InstanceSnapshot(
            pk=r.pk, workflow=workflow, instance_id=r.instance_id,
            params=decode_json(r.params), status=r.status, created_at_ms=r.created_at_ms,
            fence=r.fence, started_at_ms=r.started_at_ms, paused=r.paused,
            control=decode_json(r.control), slot=r.slot, admit_priority=r.admit_priority,
        )
        for r in mine
    ]
    with_events = {r.pk for r in mine if r.has_events}
    leased = Leased([], [r.instance_id for r in rows if r.lease_owner != taker],
                    resumable=resumable)
    for snap in snapshots:
        if (snap.control or {}).get("op") == "restart":
            await reset_history_txn(conn, snap, (snap.control or {}).get("from_step"), now_ms)
            leased.restarted.append(snap)
        leased.snapshots.append(snap)
    if leased.snapshots:
        by_pk = {s.pk: s for s in leased.snapshots}
        # At fence 1 this is the instance's first lease: no turn has written history yet.
        unknown = [pk for pk, snap in by_pk.items()
                   if pk not in leased.resumable and snap.fence > 1]
        if unknown:
            for instance_pk, *values in await conn.execute(_LOAD_STEPS,
                                                           {"b_pks": padded(unknown)}):
                by_pk[instance_pk].steps.append(step_record(values))
        if with_events:
            for row in await conn.execute(_LOAD_EVENTS, {"b_pks": padded(with_events)}):
                by_pk[row.instance_pk].events.append(h.PendingEvent(
                    row.pk, row.event_type, decode_json(row.payload), row.received_at_ms))
    return leased


def _as_decided(row: Any) -> bool:
    """Whether a locked instance is as a run deciding ahead of its lock saw it."""
    return row.status == h.STATUS_RUNNING and row.slot and not row.has_events


async def reset_history_txn(
    conn: AsyncConnection, snap: h.InstanceSnapshot, from_step: list[Any] | None, now_ms: int
) -> None:
    """Discard history for a restart: all of it, or the given step and every step started
    after it. Events consumed by discarded steps are discarded with them.

    A kept step whose attempt was still running when the instance finished had its token
    cleared then (``_finish_txn``): its result can never land, so the attempt is failed
    here, as the sweeper fails a lost one, and the restarted run retries the step instead
    of waiting for it forever.
    """
    s = steps.c
    doomed = select(s.step_key).where(s.instance_pk == snap.pk)
    keys: list[str] = []
    if from_step is None:
        keys = list((await conn.execute(doomed)).scalars())
    else:
        name, count = from_step
        start = (await conn.execute(
            select(s.start_seq).where(s.instance_pk == snap.pk,
                                      s.step_key == f"{name}#{count}"))).scalar()
        if start is not None:  # else the step never ran: nothing to discard
            doomed = doomed.where(s.start_seq >= start)
            keys = list((await conn.execute(doomed)).scalars())
    if keys:
        # Same table order as commit_txn's writes (steps, then the attempt log).
        await conn.execute(delete(steps).where(s.instance_pk == snap.pk, s.step_key.in_(keys)))
        await conn.execute(delete(step_attempts).where(
            step_attempts.c.instance_pk == snap.pk, step_attempts.c.step_key.in_(keys)))
        await conn.execute(delete(timers).where(
            timers.c.instance_pk == snap.pk, timers.c.step_key.in_(keys)))
        await conn.execute(delete(events).where(
            events.c.instance_pk == snap.pk, events.c.consumed_by.in_(keys)))
    if from_step is not None:  # a full reset kept no step
        abandoned = locked(steps, s.instance_pk == snap.pk, s.state == h.RUNNING,
                           s.attempt >= 1, s.attempt_token.is_(None),
                           s.attempt_outcome.is_(None))
        await conn.execute(update(steps).where(joined(steps, abandoned)).values(
            attempt_outcome="error", error=_ABANDONED, ended_at_ms=now_ms))
    await conn.execute(update(instances).where(instances.c.pk == snap.pk).values(
        control=None, status=h.STATUS_RUNNING, output=None, error=None, ended_at_ms=None,
        rollback=None, paused=False))
    snap.status, snap.control, snap.paused = h.STATUS_RUNNING, None, False


@dataclass(slots=True)
class Committed:
    """Result of :func:`commit_txn`.

    Attributes:
        held: Instances whose outcome was committed (still leased by us).
        again: Instances that got a message while we held them: they need another turn.
        denied: Instances that would have run but got no concurrency slot (now queued;
            their outcome was not committed).
        admitted: Other instances given a freed slot: (workflow, instance_id) to wake.
    """

    held: set[int] = field(default_factory=set)
    again: set[int] = field(default_factory=set)
    denied: set[int] = field(default_factory=set)
    admitted: list[tuple[str, str]] = field(default_factory=list)
    slots_open: bool | None = None

    def add(self, other: Committed) -> None:
        """Count ``other``'s instances (another part of the same turn) in with these."""
        self.held |= other.held
        self.again |= other.again
        self.denied |= other.denied
        self.admitted += other.admitted
        if other.slots_open is not None:
            self.slots_open = other.slots_open


async def commit_txn(
    conn: AsyncConnection, owner: str, results: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]],
    worker: str, now_ms: int, *, locked_in_this_transaction: bool = False,
    optimistic_slots: bool = False,
) -> Committed:
    """Settle slots, persist the outcomes of instances still leased by ``owner`` and release
    their leases.

    With ``locked_in_this_transaction`` the instance rows have been locked since
    :func:`acquire_txn` took them (without a lease) in this same transaction: nothing can
    have changed them (no command, no admission, no other turn) and there is no lease to
    release, so an instance row is written only if its outcome changes it (a turn that
    applies one step's result and starts the next leaves it as it was). With
    ``optimistic_slots`` too (and none of the instances in the admission queue), slots are
    taken without locking the gates and counted last (see ``engine._store._gates``); that
    raises ``SlotsContended`` when the caller must roll back and commit the turn again
    without ``optimistic_slots``.
    ``Committed.slots_open`` then says whether to try optimistically again.
    """
    pks = [snap.pk for snap, _ in results]
    if locked_in_this_transaction:
        done = Committed(held=set(pks))
        slots = {snap.pk: (snap.slot, snap.admit_priority is not None) for snap, _ in results}
        kept = list(results)
    else:
        mine = locked(instances, instances.c.pk.in_(padded(pks)),
                      instances.c.lease_owner == owner)
        released = (await conn.execute(
            update(instances)
            .where(joined(instances, mine))
            .values(lease_owner=None, lease_expires_ms=None)
            .returning(instances.c.pk, instances.c.needs_turn, instances.c.control,
                       instances.c.slot, instances.c.admit_priority)
        )).all()
        done = Committed(held={r.pk for r in released},
                         again={r.pk for r in released if r.needs_turn})
        # Slots and queue places as they are now (another transaction may have admitted
        # the instance while this turn ran), not as the turn's snapshot saw them.
        slots = {r.pk: (r.slot, r.admit_priority is not None) for r in released}
        # A control command recorded while this turn ran (restart, terminate) supersedes
        # its outcome: commit nothing for that instance; the next turn applies the command.
        control = {r.pk: decode_json(r.control) for r in released}
        superseded = {snap.pk for snap, _ in results
                      if snap.pk in control and control[snap.pk] != snap.control}
        done.again |= superseded
        kept = [(snap, out) for snap, out in results
                if snap.pk in done.held and snap.pk not in superseded]
    requests = [SlotRequest(pk=snap.pk, had_slot=slots[snap.pk][0],
                            wants_slot=wants_slot(out.status), queued=slots[snap.pk][1],
                            priority=NEW if snap.started_at_ms is None else WOKEN)
                for snap, out in kept]
    moved = [r for r in requests if r.wants_slot != r.had_slot]
    optimistic = (optimistic_slots and locked_in_this_transaction
                  and not any(r.queued for r in requests))
    if kept and not optimistic:
        settlement = await settle_txn(conn, kept[0][0].workflow, requests, now_ms)
        done.denied, done.admitted = settlement.denied, settlement.admitted
        done.slots_open = settlement.open
        kept = [(snap, out) for snap, out in kept if snap.pk not in done.denied]
    if not kept:
        return done
    # Start and end times are read now, with the instance rows (and, for slot changes, the
    # gates unless optimistic, far from any limit) locked: they then order exactly as the
    # concurrency slots were held.
    await _write_instances(conn, kept, max(now_ms, clock.now_ms()),
                           only_changed=locked_in_this_transaction,
                           slots=optimistic and bool(moved))
    await _finish_txn(conn, [(snap, out) for snap, out in kept
                             if out.finished and out.loose_ends])
    # New steps and changed ones in one upsert (a turn typically ends one step and starts
    # the next), each with the token of the attempt it starts, if any: replay puts the step
    # of every attempt it starts among the inserted or the changed ones.
    written = step_rows(kept, worker, now_ms)
    if written:
        await conn.execute(_UPSERT_STEPS[conn.dialect.name], written)
    failed = failed_attempt_rows(kept)
    if failed:
        await conn.execute(_LOG_FAILED_ATTEMPTS[conn.dialect.name], failed)
    cleared = [(snap.pk, key) for snap, out in kept
               for key in [*out.timers_cleared, *out.timers_set]]
    if cleared:
        await conn.execute(delete(timers).where(
            tuple_(timers.c.instance_pk, timers.c.step_key).in_(padded(cleared))
        ))
    consumed = [{"b_pk": pk, "b_key": key} for snap, out in kept
                for pk, key in out.events_consumed]
    if consumed:
        await conn.execute(
            update(events).where(events.c.pk == bindparam("b_pk"), events.c.consumed_by.is_(None))
            .values(consumed_by=bindparam("b_key")), consumed)
    timer_rows = [{"instance_pk": snap.pk, "step_key": key, "due_at_ms": due}
                  for snap, out in kept for key, due in out.timers_set.items()]
    if timer_rows:
        await conn.execute(insert(timers), timer_rows)
    if optimistic and moved:
        await count_slots_txn(conn, kept[0][0].workflow,
                              sum(1 if r.wants_slot else -1 for r in moved))
    return done


async def _finish_txn(
    conn: AsyncConnection, ended: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]]
) -> None:
    """Clean up after instances that ended: no timers left, and results of attempts still
    in flight (terminate) can no longer land."""
    pks = [snap.pk for snap, _ in ended]
    if not pks:
        return
    await conn.execute(delete(timers).where(timers.c.instance_pk.in_(padded(pks))))
    doomed = locked(steps, steps.c.instance_pk.in_(padded(pks)), steps.c.state == h.RUNNING)
    await conn.execute(update(steps).where(joined(steps, doomed))
                       .values(attempt_token=None, heartbeat_at_ms=None))


def step_rows(
    kept: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]], worker: str, now_ms: int
) -> list[dict[str, Any]]:
    """The ``warren_steps`` rows a turn writes (new steps and changed ones), in lock order,
    each with the token of the attempt it starts, if any."""
    tokens = {(snap.pk, a.key): a.token for snap, out in kept for a in out.attempts}
    return sorted_params([
        {"instance_pk": snap.pk, "step_key": r.key, **step_values(r),
         **_runner(r, worker, now_ms), "attempt_token": tokens.get((snap.pk, r.key))}
        for snap, out in kept for r in (*out.inserted, *out.updated)
    ], "instance_pk", "step_key")


def failed_attempt_rows(
    kept: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]],
) -> list[dict[str, Any]]:
    """The attempt log rows of the failures a turn applies."""
    return [{"instance_pk": snap.pk, "step_key": f.key, "attempt": f.attempt,
             "started_at_ms": f.started_at_ms, "ended_at_ms": f.ended_at_ms,
             "error": None if f.error is None else orjson.dumps(f.error).decode()}
            for snap, out in kept for f in out.failed_attempts]


def _runner(record: h.StepRecord, worker: str, now_ms: int) -> dict[str, Any]:
    running = record.state == h.RUNNING and record.attempt_outcome is None
    return {"worker": worker if running else None, "heartbeat_at_ms": now_ms if running else None}


async def _write_instances(
    conn: AsyncConnection, kept: Sequence[tuple[h.InstanceSnapshot, TurnOutcome]], now_ms: int,
    *, only_changed: bool, slots: bool,
) -> None:
    """Write the instances' outcomes (and, with ``slots``, whether each holds a slot now);
    with ``only_changed``, skip those the outcome leaves as their snapshot shows them."""
    rows = []
    for snap, out in kept:
        if only_changed and unchanged(snap, out):
            continue
        row = {"b_pk": snap.pk, **instance_values(snap, out, now_ms)}
        if out.status == h.TERMINATED:
            row["control"] = None  # a terminate with rollback is done
        if slots:
            row["slot"] = wants_slot(out.status)
        rows.append(row)
    for keys in {tuple(sorted(r)) for r in rows}:  # executemany needs one shape per call
        await conn.execute(
            _UPDATE_INSTANCE, [r for r in rows if tuple(sorted(r)) == keys],
        )


def instance_values(snap: h.InstanceSnapshot, out: TurnOutcome, now_ms: int) -> dict[str, Any]:
    """The instance columns a turn writes for its outcome.

    Raises:
        ValidationError: A value cannot be stored (over its limit).
    """
    # The error is the instance's once it has ended (a rollback may still be running).
    error = out.error if out.finished else None
    return {
        "status": out.status,
        "output": None if out.output is None else encode_json(out.output, what="output"),
        "error": None if error is None else encode_json(error, what="error"),
        "rollback": None if out.rollback is None else encode_json(out.rollback,
                                                                  what="rollback"),
        "started_at_ms": snap.started_at_ms or now_ms,
        "ended_at_ms": now_ms if out.finished else None,
    }


def unchanged(snap: h.InstanceSnapshot, out: TurnOutcome) -> bool:
    """Whether writing this outcome would leave the instance row as it is: same status, not
    finished (no output, error or end time), already started, no rollback result, and no
    slot to take or give back."""
    return (out.status == snap.status and not out.finished and out.rollback is None
            and snap.started_at_ms is not None and wants_slot(out.status) == snap.slot)


async def record_attempts_txn(
    conn: AsyncConnection, results: Sequence[h.AttemptResult],
    applied_in_memory: Set[int] = frozenset(),
) -> None:
    """Store ended attempts in their step rows. An attempt no longer current (superseded,
    or the instance was reset) matches no row and its result is dropped: the turn already
    moved on.

    Results of the instances in ``applied_in_memory`` are left out: the turn resuming them
    applies each result in memory exactly as this update would and then rewrites the whole
    step row (an applied result always completes or reschedules its step), so writing it
    here too would update the same row twice.
    """
    params = sorted_params([_attempt_params(r) for r in results
                            if r.instance_pk not in applied_in_memory], "b_pk", "b_key")
    if params:
        await conn.execute(_RECORD_STEP, params)


def _attempt_params(r: h.AttemptResult) -> dict[str, Any]:
    return {"b_pk": r.instance_pk, "b_key": r.key, "b_token": r.token,
            "b_outcome": "ok" if r.ok else "error", "b_output": r.output, "b_error": r.error,
            "b_ended": r.ended_at_ms}


async def heartbeat_txn(
    conn: AsyncConnection, running: Sequence[tuple[int, str, str]], now_ms: int
) -> None:
    """Refresh the heartbeat of attempts this worker is executing: (pk, key, token)."""
    if not running:
        return
    s = steps.c
    alive = locked(steps, tuple_(s.instance_pk, s.step_key, s.attempt_token).in_(padded(running)),
                   s.state == h.RUNNING)
    await conn.execute(update(steps).where(joined(steps, alive)).values(heartbeat_at_ms=now_ms))


async def release_leases_txn(conn: AsyncConnection, owner: str) -> None:
    """Give up every lease taken with the acquisition token ``owner`` (a failed batch)."""
    c = instances.c
    mine = locked(instances, c.lease_owner == owner)
    await conn.execute(update(instances).where(joined(instances, mine))
                       .values(lease_owner=None, lease_expires_ms=None))
