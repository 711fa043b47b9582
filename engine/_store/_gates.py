"""Gatekeeping: concurrency slots per workflow and overall, an admission queue, fairness.

An instance holds a slot while it is ``running`` (or ``waiting_for_pause``); sleeping,
waiting for an event or a retry, being paused or finished releases it. A turn that would
make an instance run without a slot asks for one in its commit; if none is free — or
instances are queued ahead of it — the turn's decisions are dropped and the instance joins
the admission queue (an index on ``(workflow, admit_priority, admit_seq)``): priority 0 for
woken instances, 1 for never-started ones, oldest first within each. Freed slots are
handed out in the same transaction that frees them: each workflow's share of the global
limit is filled max-min fairly (the workflow running the fewest goes first), and a queue's
head is taken with ``SKIP LOCKED`` so admission never waits on a row another turn holds.
Costs depend on the slots moved, never on how many instances are queued.

Every turn that moves a slot writes the workflow's gate row and the global one, so those
two rows serialize such turns across all workers. :func:`settle_txn` locks them before the
turn writes its outcomes, because it must know who is refused before writing anything; a
batch of 100 creates then held them for hundreds of milliseconds under load, and woken
instances queued behind it. While nothing is queued and there is room (the common case),
a turn instead takes its slots optimistically and counts them with
:func:`count_slots_txn` as its last statement, holding the rows only until its commit; if
that count finds a queue or a limit crossed, the turn is redone with :func:`settle_txn`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import _history as h
from engine._store._batching import padded
from engine._store._dialects import conflict_insert
from engine._store._schema import gates, instances

ALL = "*"
WOKEN, NEW = 0, 1  # admission priorities: woken instances go before never-started ones
DEFAULT_GLOBAL_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Limits of one workflow: ``max_running`` slots, ``rate`` admissions per second."""

    max_running: int | None = None
    rate: float | None = None


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """What a turn's outcome means for one instance's slot."""

    pk: int
    had_slot: bool
    wants_slot: bool
    queued: bool            # in the admission queue before this turn
    priority: int           # WOKEN or NEW, should it have to queue


OPEN_MARGIN = 100
"""Free slots a gate must have left, besides an empty admission queue everywhere, for turns
to take slots optimistically (one batch's worth, so one batch rarely crosses the limit)."""


@dataclass(slots=True)
class Settlement:
    """Result of :func:`settle_txn`: who was refused a slot, and who was admitted.

    ``open`` says whether slots could be taken optimistically now (``None``: not looked at).
    """

    denied: set[int] = field(default_factory=set)
    admitted: list[tuple[str, str]] = field(default_factory=list)
    open: bool | None = None


class SlotsContended(Exception):
    """An optimistic slot count found instances queued or a limit crossed: the transaction
    must be rolled back and the turn settled with :func:`settle_txn`."""


@dataclass(slots=True)
class _Gate:
    workflow: str
    max_running: int | None
    running: int
    queued: int
    rate: float | None
    tokens: float
    tokens_at_ms: int
    stored: bool = False  # the row exists (it was locked)

    def refill(self, now_ms: int) -> None:
        if self.rate is None:
            return
        burst = max(1.0, self.rate)
        elapsed = max(0, now_ms - self.tokens_at_ms) / 1000
        self.tokens = min(burst, self.tokens + elapsed * self.rate)
        self.tokens_at_ms = now_ms

    def free(self) -> float:
        return float("inf") if self.max_running is None else self.max_running - self.running


def wants_slot(status: str) -> bool:
    """Whether an instance in ``status`` holds a concurrency slot."""
    return status in (h.STATUS_RUNNING, h.WAITING_FOR_PAUSE)


async def configure_txn(
    conn: AsyncConnection, configs: Mapping[str, GateConfig], global_limit: int, now_ms: int
) -> None:
    """Create or update the gate rows of served workflows and the global row."""
    insert_ = conflict_insert(conn)
    rows = [{"workflow": name, "max_running": c.max_running, "rate": c.rate}
            for name, c in sorted(configs.items())]
    rows.append({"workflow": ALL, "max_running": global_limit, "rate": None})  # lock order
    for row in rows:
        stmt = insert_(gates).values(**row, running=0, queued=0, tokens=0.0,
                                     tokens_at_ms=now_ms)
        await conn.execute(stmt.on_conflict_do_update(
            index_elements=[gates.c.workflow],
            set_={"max_running": row["max_running"], "rate": row["rate"]},
        ))


async def _lock_gates(
    conn: AsyncConnection, workflows: Iterable[str], *, with_queued: bool = False
) -> dict[str, _Gate]:
    """Lock the gates of ``workflows`` and the global one (and, ``with_queued``, those of
    every workflow with instances waiting for a slot)."""
    # Gate rows are locked after instance rows, in name order with '*' last, by everyone
    # (PostgreSQL locks the rows of an ordered SELECT ... FOR UPDATE in that order).
    names = sorted(set(workflows) - {ALL})
    wanted = gates.c.workflow.in_([*names, ALL])
    rows = (await conn.execute(
        select(gates).where(or_(wanted, gates.c.queued > 0) if with_queued else wanted)
        .with_for_update().order_by(gates.c.workflow == ALL, gates.c.workflow)
    )).all()
    found = {r.workflow: _Gate(r.workflow, r.max_running, r.running, r.queued, r.rate,
                               r.tokens, r.tokens_at_ms, stored=True) for r in rows}
    for name in [*names, ALL]:
        found.setdefault(name, _Gate(name, DEFAULT_GLOBAL_LIMIT if name == ALL else None,
                                     0, 0, None, 0.0, 0))
    return found


async def _store_gates(conn: AsyncConnection, touched: Iterable[_Gate]) -> None:
    insert_ = conflict_insert(conn)
    stored = []
    for gate in touched:
        values = {"running": max(0, gate.running), "queued": max(0, gate.queued),
                  "tokens": gate.tokens, "tokens_at_ms": gate.tokens_at_ms}
        if gate.stored:  # the common case: one executemany for all of them
            stored.append({"b_workflow": gate.workflow, **values})
            continue
        await conn.execute(insert_(gates).values(
            workflow=gate.workflow, max_running=gate.max_running, rate=gate.rate, **values,
        ).on_conflict_do_update(index_elements=[gates.c.workflow], set_=values))
    if stored:
        await conn.execute(_UPDATE_GATE, stored)


_UPDATE_GATE = update(gates).where(gates.c.workflow == bindparam("b_workflow"))


async def settle_txn(
    conn: AsyncConnection, workflow: str, requests: Sequence[SlotRequest], now_ms: int
) -> Settlement:
    """Apply a batch of turns' slot changes for one workflow, then hand out freed slots."""
    result = Settlement()
    changing = [r for r in requests
                if r.had_slot != r.wants_slot or (r.queued and not r.wants_slot)]
    if not changing:
        return result
    # Freed global slots may belong to another workflow's queue (fairness): lock those too.
    gate_map = await _lock_gates(conn, [workflow], with_queued=True)
    gate, total = gate_map[workflow], gate_map[ALL]
    gate.refill(now_ms)
    released = [r.pk for r in changing if r.had_slot and not r.wants_slot]
    gate.running -= len(released)
    total.running -= len(released)
    dequeued = [r.pk for r in changing if r.queued and not r.wants_slot]
    gate.queued -= len(dequeued)
    granted: list[int] = []
    enqueued: list[tuple[int, int]] = []
    # Global slots that other workflows' queued instances could use now: a direct grant
    # must leave those to them, or a flood would keep winning over a queued neighbour.
    owed = sum(min(g.queued, g.free()) for name, g in gate_map.items()
               if name not in (workflow, ALL))
    for r in sorted((r for r in changing if r.wants_slot and not r.had_slot),
                    key=lambda r: (r.priority, r.pk)):
        ahead = await _queued_ahead(conn, workflow, r) if gate.queued > int(r.queued) else False
        token_ok = r.priority == WOKEN or gate.rate is None or gate.tokens >= 1
        if not ahead and token_ok and gate.free() >= 1 and total.free() - owed >= 1:
            granted.append(r.pk)
            gate.running += 1
            total.running += 1
            if r.priority == NEW and gate.rate is not None:
                gate.tokens -= 1
            if r.queued:
                gate.queued -= 1
                dequeued.append(r.pk)
        else:
            result.denied.add(r.pk)
            if not r.queued:
                enqueued.append((r.pk, r.priority))
                gate.queued += 1
    await _set_slots(conn, granted, True)
    await _set_slots(conn, released, False)
    await _dequeue(conn, dequeued)
    for pk, priority in enqueued:
        # Refused: the instance shows as queued (API.md §6) until a slot is handed to it.
        await conn.execute(update(instances).where(instances.c.pk == pk).values(
            admit_priority=priority, admit_seq=pk if priority == NEW else now_ms,
            status=h.QUEUED))
    if released or dequeued:
        result.admitted = await _admit(conn, gate_map, now_ms)
    await _store_gates(conn, gate_map.values())
    result.open = (gate.rate is None and all(g.queued <= 0 for g in gate_map.values())
                   and min(gate.free(), total.free()) >= OPEN_MARGIN)
    return result


async def count_slots_txn(conn: AsyncConnection, workflow: str, delta: int) -> None:
    """Count ``delta`` slots taken (or, negative, freed) without having locked the gates.

    The last statement of the turn's transaction: it holds the gate rows only until the
    commit. Raises :class:`SlotsContended` if the workflow has a rate limit, if any instance
    is waiting for a slot (a direct grant would jump that queue, a freed slot is owed to it),
    or if slots were taken and fewer than :data:`OPEN_MARGIN` are left: so close to a limit,
    only :func:`settle_txn` orders the turns' start and end times exactly as the slots were
    held. The caller then rolls back and settles with :func:`settle_txn`.
    A queue that another workflow starts while this statement runs may be missed; its head
    then gets the next freed slot, or the sweeper's admission pass hands it one.
    """
    # Gate rows are locked in the order every transaction locks them: name order, '*' last.
    order = select(gates.c.workflow).where(gates.c.workflow.in_([workflow, ALL])).order_by(
        gates.c.workflow == ALL, gates.c.workflow).with_for_update().subquery()
    waiting = select(func.count()).where(gates.c.queued > 0).scalar_subquery()
    rows = (await conn.execute(
        update(gates).where(gates.c.workflow == order.c.workflow)
        .values(running=gates.c.running + delta)
        .returning(gates.c.workflow, gates.c.running, gates.c.max_running, gates.c.rate,
                   waiting.label("waiting"))
    )).all()
    found = {r.workflow: r for r in rows}
    if set(found) != {workflow, ALL} or found[workflow].rate is not None or any(
        r.waiting or (delta > 0 and r.max_running is not None
                      and r.running > r.max_running - OPEN_MARGIN)
        for r in rows
    ):
        raise SlotsContended(workflow)


async def _queued_ahead(conn: AsyncConnection, workflow: str, request: SlotRequest) -> bool:
    # Two probes that each stop at the first index entry: an OR of both would make the
    # planner scan the whole admission queue (cost growing with the number queued).
    c = instances.c
    base = select(c.pk).where(c.workflow == workflow, c.pk != request.pk)
    woken = base.where(c.admit_priority == WOKEN).limit(1)
    if (await conn.execute(woken)).first() is not None:
        return True
    if request.priority == WOKEN:
        return False
    older = base.where(c.admit_priority == NEW, c.admit_seq < request.pk).limit(1)
    return (await conn.execute(older)).first() is not None


async def _set_slots(conn: AsyncConnection, pks: list[int], slot: bool) -> None:
    if pks:
        await conn.execute(update(instances).where(instances.c.pk.in_(padded(pks)))
                           .values(slot=slot))


async def _dequeue(conn: AsyncConnection, pks: list[int]) -> None:
    if pks:
        await conn.execute(update(instances).where(instances.c.pk.in_(padded(pks)))
                           .values(admit_priority=None, admit_seq=None))


async def _admit(
    conn: AsyncConnection, gate_map: dict[str, _Gate], now_ms: int
) -> list[tuple[str, str]]:
    """Grant free slots to queued instances, max-min fairly across the locked workflows."""
    total = gate_map[ALL]
    shares: dict[str, int] = {}
    candidates = {w: g for w, g in gate_map.items() if w != ALL and g.queued > 0}
    for gate in candidates.values():
        gate.refill(now_ms)
    budget = total.free()
    while budget >= 1 and candidates:
        # Water-filling: the workflow with the fewest running (granted ones included) next.
        name, gate = min(candidates.items(),
                         key=lambda kv: (kv[1].running + shares.get(kv[0], 0), kv[0]))
        given = shares.get(name, 0)
        tokens_left = float("inf") if gate.rate is None else gate.tokens - given
        if given >= gate.queued or gate.free() - given < 1 or tokens_left < 1:
            del candidates[name]
            continue
        shares[name] = given + 1
        budget -= 1
    admitted: list[tuple[str, str]] = []
    c = instances.c
    for name, count in shares.items():
        rows = (await conn.execute(
            select(c.pk, c.instance_id, c.admit_priority).where(
                c.workflow == name, c.admit_priority.is_not(None))
            .order_by(c.admit_priority, c.admit_seq).limit(count)
            .with_for_update(skip_locked=True)
        )).all()
        if not rows:
            continue
        pks = [r.pk for r in rows]
        await conn.execute(update(instances).where(c.pk.in_(padded(pks)))
                           .values(slot=True, admit_priority=None, admit_seq=None))
        gate = gate_map[name]
        gate.running += len(rows)
        gate.queued -= len(rows)
        total.running += len(rows)
        if gate.rate is not None:
            gate.tokens -= sum(1 for r in rows if r.admit_priority == NEW)
        admitted += [(name, r.instance_id) for r in rows]
    return admitted


async def admit_all_txn(
    conn: AsyncConnection, served: Sequence[str], now_ms: int
) -> list[tuple[str, str]]:
    """The sweeper's pass: hand out slots freed by time (token refill) or by repairs."""
    queued = (await conn.execute(select(gates.c.workflow).where(
        gates.c.queued > 0, gates.c.workflow.in_(served)))).scalars().all()
    if not queued:
        return []
    gate_map = await _lock_gates(conn, queued)
    admitted = await _admit(conn, gate_map, now_ms)
    await _store_gates(conn, gate_map.values())
    return admitted


async def reconcile_txn(conn: AsyncConnection) -> None:
    """Recount ``running`` and ``queued`` from the instances (repairs any drift)."""
    c = instances.c
    names = (await conn.execute(select(gates.c.workflow))).scalars().all()
    gate_map = await _lock_gates(conn, names)
    running: dict[str, int] = dict((await conn.execute(
        select(c.workflow, func.count()).where(c.slot.is_(True)).group_by(c.workflow))).all())
    queued: dict[str, int] = dict((await conn.execute(
        select(c.workflow, func.count()).where(c.admit_priority.is_not(None))
        .group_by(c.workflow))).all())
    for name, gate in gate_map.items():
        if name == ALL:
            gate.running = sum(running.values())
        else:
            gate.running, gate.queued = running.get(name, 0), queued.get(name, 0)
    await _store_gates(conn, gate_map.values())


async def gate_counts(conn: AsyncConnection, workflow: str) -> dict[str, Any]:
    """``running``, ``queued`` and ``waiting`` instances of a workflow, and its limits."""
    row = (await conn.execute(select(gates).where(gates.c.workflow == workflow))).first()
    waiting = (await conn.execute(select(func.count()).where(
        instances.c.workflow == workflow, instances.c.status == h.STATUS_WAITING))).scalar()
    return {
        "workflow": workflow, "running": row.running if row else 0,
        "queued": row.queued if row else 0, "waiting": int(waiting or 0),
        "max_running": row.max_running if row else None, "rate": row.rate if row else None,
    }


async def all_gate_counts(conn: AsyncConnection) -> list[dict[str, Any]]:
    """``running`` / ``queued`` of every gate (the metrics the sweeper logs)."""
    rows = (await conn.execute(select(gates).order_by(gates.c.workflow))).all()
    return [{"workflow": r.workflow, "running": r.running, "queued": r.queued,
             "max_running": r.max_running} for r in rows]
