"""Turns that only end steps and start the next ones, as one statement (PostgreSQL).

Most turns of a running instance apply a step's result and start the next step: the
instance row stays as it was, the step rows and the attempt log change. The general turn
spends six round trips on that (``BEGIN``, the lock, the attempt log, the step upsert, the
attempt inserts, ``COMMIT``). When the worker holds the instance's run in memory (see
``engine._resume_cache``) it can decide the turn first and then write it with one
statement in autocommit, which is atomic on its own: its first part increments the fence
of the instances still exactly as that run last committed them (same fence, running with
a slot, no command, not paused, no lease, no event waiting), and every other part writes
only for the instances the first part took. An instance it does not take is left as it
was, for the general turn.

The conditions are those under which the general turn would resume the same run with the
same inputs and write the same rows; the writes are those it would make. Rows are locked
in the order every transaction locks them: instance rows (in key order), then step rows,
then the attempt log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import _history as h
from engine._replay import TurnOutcome
from engine._store._schema import events, instances, step_attempts, steps
from engine._store._turns import attempt_rows, step_rows


@dataclass(frozen=True, slots=True)
class Continuation:
    """A decided turn to write: ``snapshot.fence`` is the fence the instance row must reach
    (its fence now, plus one), ``results`` the ended attempts the turn applied."""

    snapshot: h.InstanceSnapshot
    outcome: TurnOutcome
    results: Sequence[h.AttemptResult]


def only_continues(outcome: TurnOutcome) -> bool:
    """Whether a running instance's turn outcome only ends steps and starts others: it
    stays running (so it keeps its slot), and sets, clears or consumes nothing else."""
    return (outcome.status == h.STATUS_RUNNING and outcome.rollback is None
            and not outcome.timers_set and not outcome.timers_cleared
            and not outcome.events_consumed)


def _columns(names: Sequence[str]) -> str:
    return ", ".join(names)


def _statement() -> str:
    i, s, a, e = instances.name, steps.name, step_attempts.name, events.name
    step_cols = [c.name for c in steps.c]
    attempt_cols = [c.name for c in step_attempts.c]
    kept_cols = [c.name for c in steps.c if not c.primary_key and c.name != "attempt_token"]
    upsert_set = ", ".join(f"{c} = EXCLUDED.{c}" for c in kept_cols)
    return f"""
WITH wanted AS (
    SELECT * FROM json_to_recordset(CAST(:instances AS json)) AS w(pk bigint, fence integer)
), taken AS (
    UPDATE {i} SET fence = {i}.fence + 1, needs_turn = false
    FROM (SELECT pk FROM {i} WHERE pk IN (SELECT pk FROM wanted) ORDER BY pk FOR UPDATE)
        AS locked, wanted
    WHERE {i}.pk = locked.pk AND wanted.pk = {i}.pk AND {i}.fence + 1 = wanted.fence
      AND {i}.status = '{h.STATUS_RUNNING}' AND {i}.slot AND {i}.control IS NULL
      AND NOT {i}.paused AND {i}.lease_owner IS NULL
      AND NOT EXISTS (SELECT 1 FROM {e} WHERE {e}.instance_pk = {i}.pk
                      AND {e}.consumed_by IS NULL)
    RETURNING {i}.pk
), written AS (
    INSERT INTO {s} ({_columns(step_cols)})
    SELECT {_columns(step_cols)}
    FROM json_populate_recordset(NULL::{s}, CAST(:steps AS json)) AS r
    WHERE r.instance_pk IN (SELECT pk FROM taken)
    ORDER BY r.instance_pk, r.step_key
    ON CONFLICT (instance_pk, step_key) DO UPDATE SET {upsert_set},
        attempt_token = COALESCE(EXCLUDED.attempt_token, {s}.attempt_token)
    RETURNING 1
), ended AS (
    UPDATE {a} SET ended_at_ms = r.ended_at_ms, success = r.success, error = r.error
    FROM json_populate_recordset(NULL::{a}, CAST(:ended AS json)) AS r
    WHERE {a}.instance_pk = r.instance_pk AND {a}.step_key = r.step_key
      AND {a}.attempt = r.attempt AND {a}.token = r.token AND {a}.ended_at_ms IS NULL
      AND r.instance_pk IN (SELECT pk FROM taken)
    RETURNING 1
), started AS (
    INSERT INTO {a} ({_columns(attempt_cols)})
    SELECT {_columns(attempt_cols)}
    FROM json_populate_recordset(NULL::{a}, CAST(:started AS json)) AS r
    WHERE r.instance_pk IN (SELECT pk FROM taken)
    RETURNING 1
)
SELECT pk FROM taken
"""


_CONTINUE = text(_statement())


async def continue_in_one_statement(
    conn: AsyncConnection, continuations: Sequence[Continuation], worker: str, now_ms: int
) -> set[int]:
    """Write the continuations whose instances are still as their runs left them; return
    the pks of those written. ``conn`` must be in autocommit (the statement is its own
    transaction), on PostgreSQL."""
    kept = [(c.snapshot, c.outcome) for c in continuations]
    rows = (await conn.execute(_CONTINUE, {
        "instances": _json([{"pk": c.snapshot.pk, "fence": c.snapshot.fence}
                            for c in continuations]),
        "steps": _json(step_rows(kept, worker, now_ms)),
        "ended": _json([{"instance_pk": r.instance_pk, "step_key": r.key,
                         "attempt": r.attempt, "token": r.token, "ended_at_ms": r.ended_at_ms,
                         "success": r.ok, "error": r.error}
                        for c in continuations for r in c.results]),
        "started": _json(attempt_rows(kept, now_ms)),
    })).all()
    return {pk for pk, in rows}


def _json(rows: list[dict[str, object]]) -> str:
    return orjson.dumps(rows).decode()
