"""Turns decided before their lock, written as one statement (PostgreSQL).

Most turns are one of three kinds: the first (a new instance takes a slot and starts its
first step), a continuation (a step ends, the next starts) and the last (the last step
ends, the instance completes and gives its slot back). The general turn spends six to eight
round trips on each (``BEGIN``, the lock, the step results, the instance row, the step
upsert, the slot count, ``COMMIT``). When the worker can decide the
turn without reading the store (the run is kept in memory, see ``engine._resume_cache``, or
the create message says what the client stored, see ``engine._announced``) it decides
first and then writes with one statement in autocommit, which is atomic on its own:

- its first part takes the instances still exactly as the decision assumed them (the
  fence, the status and slot, no command, not paused, no lease, not in the admission queue,
  no event waiting; for a first turn also the row the client stored), increments their
  fence and writes their instance columns;
- the step upsert writes only for the instances the first part took (a turn that applies
  a failed attempt, which the attempt log keeps, takes the general turn);
- the slots taken or given back are counted on the gate rows as
  :func:`engine._store._gates.count_slots_txn` does, and if that count finds contention
  the statement aborts itself (``warren_abort``): nothing of it is written, and the caller
  settles the turn with the general one.

An instance the first part does not take is left as it was, for the general turn. The
conditions are those under which the general turn would decide the same outcome from the
same inputs; the writes are those it would make. Rows are locked in the order every
transaction locks them: instance rows (in key order), step rows, gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text

from engine import _history as h
from engine._replay import TurnOutcome
from engine._store._driver import DriverStatement, StatementAborted
from engine._store._gates import ALL, OPEN_MARGIN, SlotsContended, wants_slot
from engine._store._schema import events, gates, instances, steps
from engine._store._turns import instance_values, step_rows, unchanged


@dataclass(frozen=True, slots=True)
class StoredRow:
    """What a first turn's decision assumed the client stored (see ``engine._announced``)."""

    token: str
    params: str


@dataclass(frozen=True, slots=True)
class DecidedTurn:
    """A turn decided ahead of its lock, to write.

    ``snapshot`` is the instance as the decision assumed it, at the fence the row must
    reach (its fence now, plus one) and ``stored`` is set for a first turn.
    """

    snapshot: h.InstanceSnapshot
    outcome: TurnOutcome
    stored: StoredRow | None = None


def writable_alone(outcome: TurnOutcome) -> bool:
    """Whether an outcome is one this statement writes: the instance runs (starting or
    continuing steps) or it ended cleanly; no timer, event, rollback or step left behind."""
    if outcome.rollback is not None or outcome.timers_set or outcome.timers_cleared:
        return False
    if outcome.events_consumed or outcome.failed_attempts:
        return False  # (an attempt that failed is written to the attempt log)
    if outcome.finished:
        return outcome.status in (h.COMPLETE, h.ERRORED) and not outcome.loose_ends
    return outcome.status == h.STATUS_RUNNING


def _columns(names: Sequence[str]) -> str:
    return ", ".join(names)


_TYPES = {"fence": "integer", "had_slot": "boolean", "write": "boolean", "slot": "boolean",
          "started_at_ms": "bigint", "ended_at_ms": "bigint", "created_at_ms": "bigint"}


def _w(field: str) -> str:
    """SQL for a field of the turn of the instance row being updated (from ``turns``, an
    object keyed by pk, read once)."""
    value = f"((SELECT t FROM turns) -> CAST({instances.name}.pk AS text) ->> '{field}')"
    return f"CAST({value} AS {_TYPES[field]})" if field in _TYPES else value


def _statement() -> str:
    i, s, e, g = instances.name, steps.name, events.name, gates.name
    step_cols = [c.name for c in steps.c]
    kept_cols = [c.name for c in steps.c if not c.primary_key and c.name != "attempt_token"]
    upsert_set = ", ".join(f"{c} = EXCLUDED.{c}" for c in kept_cols)
    written_cols = ["status", "output", "error", "rollback", "ended_at_ms", "slot"]
    instance_set = ", ".join(f"{c} = CASE WHEN {_w('write')} THEN {_w(c)} ELSE {i}.{c} END"
                             for c in written_cols)
    # A decision kept in memory may not know when the instance started; the row does.
    instance_set += f", started_at_ms = COALESCE({i}.started_at_ms, {_w('started_at_ms')})"
    # Each instance's turn is looked up by key in one JSON object, not joined: on tables
    # without statistics yet (a new deployment) the planner took that join for a nested
    # loop over every instance, quadratic in the batch (2.6 s for 583 turns).
    return f"""
WITH turns AS MATERIALIZED (
    SELECT CAST(:turns AS jsonb) AS t
), locked AS (
    SELECT pk FROM {i} WHERE pk = ANY(CAST(:pks AS bigint[])) ORDER BY pk FOR UPDATE
), taken AS (
    UPDATE {i} SET fence = {i}.fence + 1, needs_turn = false, {instance_set}
    WHERE {i}.pk = ANY(CAST(:pks AS bigint[]))
      AND (SELECT count(*) FROM locked) > 0  -- once, first: the rows locked in key order
      AND {i}.fence + 1 = {_w('fence')} AND {i}.status = {_w('was')}
      AND {i}.slot = {_w('had_slot')} AND {i}.control IS NULL
      AND NOT {i}.paused AND {i}.lease_owner IS NULL AND {i}.admit_priority IS NULL
      AND ({_w('token')} IS NULL OR ({i}.workflow = :workflow
           AND {i}.instance_id = {_w('instance_id')} AND {i}.create_token = {_w('token')}
           AND {i}.created_at_ms = {_w('created_at_ms')} AND {i}.params = {_w('params')}))
      AND NOT EXISTS (SELECT 1 FROM {e} WHERE {e}.instance_pk = {i}.pk
                      AND {e}.consumed_by IS NULL)
    RETURNING {i}.pk,
        CAST({_w('slot')} AS integer) - CAST({_w('had_slot')} AS integer) AS moved
), written AS (
    INSERT INTO {s} ({_columns(step_cols)})
    SELECT {_columns(step_cols)}
    FROM json_populate_recordset(NULL::{s}, CAST(:steps AS json)) AS r
    WHERE r.instance_pk IN (SELECT pk FROM taken)
    ORDER BY r.instance_pk, r.step_key
    ON CONFLICT (instance_pk, step_key) DO UPDATE SET {upsert_set},
        attempt_token = COALESCE(EXCLUDED.attempt_token, {s}.attempt_token)
    RETURNING 1
), delta AS (
    SELECT COALESCE(SUM(moved), 0) AS n FROM taken
), counted AS (
    -- Turns that move no slot must not lock the gates: the filter on delta is checked
    -- once, before the scan.
    UPDATE {g} SET running = {g}.running + (SELECT n FROM delta)
    FROM (SELECT workflow FROM {g}
          WHERE workflow IN (:workflow, '{ALL}') AND (SELECT n FROM delta) <> 0
          ORDER BY workflow = '{ALL}', workflow FOR UPDATE) AS locked
    WHERE {g}.workflow = locked.workflow
    RETURNING {g}.workflow, {g}.running, {g}.max_running, {g}.rate,
        (SELECT count(*) FROM {g} AS q WHERE q.queued > 0) AS waiting
), contended AS (
    SELECT delta.n <> 0 AND (
        (SELECT count(*) FROM counted) <> 2
        OR EXISTS (SELECT 1 FROM counted AS c
                   WHERE (c.workflow = :workflow AND c.rate IS NOT NULL) OR c.waiting > 0
                      OR (delta.n > 0 AND c.max_running IS NOT NULL
                          AND c.running > c.max_running - {OPEN_MARGIN}))
    ) AS yes FROM delta
)
SELECT taken.pk, CASE WHEN contended.yes THEN warren_abort('slots contended') END
FROM taken, contended
"""


_WRITE = DriverStatement.compile(text(_statement()))


async def write_decided_turns(
    conn: asyncpg.Connection, workflow: str, turns: Sequence[DecidedTurn], worker: str,
    now_ms: int,
) -> set[int]:
    """Write the turns whose instances are still as their decisions assumed; return the
    pks of those written. ``conn`` is a driver connection (``Database.driver``): the
    statement is its own transaction.

    Raises:
        SlotsContended: The slots these turns take or give back must be settled under the
            gates' locks (nothing was written).
        ValidationError: An outcome cannot be stored (a value over its limit; nothing was
            written).
    """
    decided = [(t.snapshot, t.outcome) for t in turns]
    params = {
        "workflow": workflow,
        "pks": sorted(t.snapshot.pk for t in turns),
        "turns": _json({str(t.snapshot.pk): _instance_row(t, now_ms) for t in turns}),
        "steps": _json(step_rows(decided, worker, now_ms)),
    }
    try:
        rows = await _WRITE.fetch(conn, params)
    except StatementAborted:
        raise SlotsContended(workflow) from None
    return {row[0] for row in rows}


def _instance_row(turn: DecidedTurn, now_ms: int) -> dict[str, Any]:
    """The instance row a turn expects and, where its outcome changes it, the columns it
    writes (as the general turn's ``_write_instances`` would)."""
    snap, out = turn.snapshot, turn.outcome
    row: dict[str, Any] = {
        "pk": snap.pk, "fence": snap.fence, "was": snap.status, "had_slot": snap.slot,
        "write": not unchanged(snap, out), **instance_values(snap, out, now_ms),
        "slot": wants_slot(out.status),
    }
    if turn.stored is not None:
        row.update(instance_id=snap.instance_id, created_at_ms=snap.created_at_ms,
                   token=turn.stored.token, params=turn.stored.params)
    return row


def _json(value: object) -> str:
    return orjson.dumps(value).decode()
