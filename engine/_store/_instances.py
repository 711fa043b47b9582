"""Queries about whole instances: creation (idempotent by token), lookup, status JSON."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import _history as h
from engine._codec import decode_json, public_error
from engine._store._dialects import CONFLICT_INSERTS, conflict_insert
from engine._store._driver import DriverStatement, StatementAborted
from engine._store._schema import instances, step_attempts, steps, workflows
from sdk.errors import InstanceExistsError


@dataclass(frozen=True, slots=True)
class NewInstance:
    """An instance to create: id, params as JSON text, and the create message's token."""

    instance_id: str
    params: str
    token: str


async def ensure_workflows_txn(conn: AsyncConnection, names: Sequence[str], now_ms: int) -> None:
    """Record the workflows a worker serves (idempotent)."""
    insert_ = conflict_insert(conn)
    await conn.execute(
        insert_(workflows).on_conflict_do_nothing(),
        [{"name": n, "created_at_ms": now_ms} for n in names],
    )


async def create_instances_txn(
    conn: AsyncConnection, workflow: str, items: Sequence[NewInstance], now_ms: int
) -> dict[str, int]:
    """Insert ``queued`` instances, all or none (in the caller's transaction); return their
    pks by id.

    One statement: an id that exists already is skipped by the insert and named by the
    error, which rolls the others back with the caller's transaction.

    Raises:
        InstanceExistsError: naming the ids that exist already (or come twice).
    """
    ids = [i.instance_id for i in items]
    twice = [i for i, n in Counter(ids).items() if n > 1]
    created: dict[str, int] = {} if twice else dict((await conn.execute(
        _INSERT_NEW[conn.dialect.name], [_new_row(workflow, i, now_ms) for i in items]
    )).all())
    if twice or len(created) != len(ids):
        dupes = sorted(set(twice) | (set(ids) - set(created)))
        raise InstanceExistsError(
            f"workflow {workflow!r} already has instance(s) with id {', '.join(dupes)}"
        )
    return created


async def create_instances_alone(
    conn: asyncpg.Connection, workflow: str, items: Sequence[NewInstance], now_ms: int
) -> dict[str, int] | None:
    """Insert ``queued`` instances, all or none, as one statement in autocommit (a driver
    connection, PostgreSQL); return their pks by id, or ``None`` if an id is taken (nothing
    was written: :func:`create_instances_txn` then says which).

    Saves a client create the ``BEGIN`` and ``COMMIT`` round trips and SQLAlchemy's Python,
    which a lone create waits for before its message can go out.
    """
    ids = [i.instance_id for i in items]
    if len(set(ids)) != len(ids):
        return None
    try:
        rows = await _INSERT_NEW_ALONE.fetch(conn, {
            "workflow": workflow, "now": now_ms, "n": len(items), "ids": ids,
            "params": [i.params for i in items], "tokens": [i.token for i in items],
        })
    except StatementAborted:
        return None
    return None if len(rows) != len(ids) else {row[0]: row[1] for row in rows}


async def create_from_message_txn(
    conn: AsyncConnection, workflow: str, item: NewInstance, now_ms: int
) -> str:
    """Create an instance for a create message unless it exists.

    Returns:
        ``"created"``; ``"same"`` if a row with this id and token exists (the client inserted
        it, or this is a redelivery); ``"duplicate"`` if the id belongs to another creation.
    """
    insert_ = conflict_insert(conn)
    created = (await conn.execute(
        insert_(instances).values(**_new_row(workflow, item, now_ms))
        .on_conflict_do_nothing().returning(instances.c.pk)
    )).first()
    if created is not None:
        return "created"
    token = (await conn.execute(
        select(instances.c.create_token)
        .where(instances.c.workflow == workflow, instances.c.instance_id == item.instance_id)
    )).scalar_one()
    return "same" if token == item.token else "duplicate"


_INSERT_NEW = {
    name: insert_(instances).on_conflict_do_nothing().returning(instances.c.instance_id,
                                                                instances.c.pk)
    for name, insert_ in CONFLICT_INSERTS.items()
}


# The columns the table fills from Python-side defaults (fence, flags), as SQL literals.
_DEFAULTED = {c.name: str(c.default.arg).lower() for c in instances.c
              if c.default is not None and c.default.is_scalar}

# An id that exists is skipped by the insert; if that leaves any row out, the statement
# aborts itself (warren_abort), so nothing of it is written. (All taken: no row to abort in,
# and nothing written either.)
_INSERT_NEW_ALONE = DriverStatement.compile(text(f"""
WITH new AS (
    INSERT INTO {instances.name} (workflow, instance_id, status, params, create_token,
                                  created_at_ms, {", ".join(_DEFAULTED)})
    SELECT CAST(:workflow AS text), r.instance_id, '{h.QUEUED}', r.params, r.token,
        CAST(:now AS bigint), {", ".join(_DEFAULTED.values())}
    FROM unnest(CAST(:ids AS text[]), CAST(:params AS text[]), CAST(:tokens AS text[]))
        AS r(instance_id, params, token)
    ON CONFLICT DO NOTHING
    RETURNING instance_id, pk
)
SELECT instance_id, pk,
    CASE WHEN (SELECT count(*) FROM new) <> :n THEN warren_abort('instance id taken') END
FROM new
"""))


def _new_row(workflow: str, item: NewInstance, now_ms: int) -> dict[str, Any]:
    return {
        "workflow": workflow, "instance_id": item.instance_id, "status": h.QUEUED,
        "params": item.params, "create_token": item.token, "created_at_ms": now_ms,
        "fence": 0, "needs_turn": False,
    }


async def existing_ids(
    conn: AsyncConnection, workflow: str, instance_ids: Iterable[str]
) -> set[str]:
    """Which of ``instance_ids`` exist in ``workflow`` (in any status)."""
    return set((await conn.execute(
        select(instances.c.instance_id)
        .where(instances.c.workflow == workflow, instances.c.instance_id.in_(list(instance_ids)))
    )).scalars())


async def instance_state(conn: AsyncConnection, workflow: str, instance_id: str) -> str | None:
    """The instance's status, or ``None`` if there is no such instance."""
    return (await conn.execute(
        select(instances.c.status)
        .where(instances.c.workflow == workflow, instances.c.instance_id == instance_id)
    )).scalar()


async def instance_status(
    conn: AsyncConnection, workflow: str, instance_id: str
) -> dict[str, Any] | None:
    """The status JSON of API.md §6, or ``None`` if there is no such instance."""
    row = (await conn.execute(
        select(instances)
        .where(instances.c.workflow == workflow, instances.c.instance_id == instance_id)
    )).first()
    if row is None:
        return None
    step_rows = (await conn.execute(
        select(steps).where(steps.c.instance_pk == row.pk).order_by(steps.c.start_seq)
    )).all()
    attempt_rows = (await conn.execute(
        select(step_attempts).where(step_attempts.c.instance_pk == row.pk)
        .order_by(step_attempts.c.step_key, step_attempts.c.attempt)
    )).all()
    failed: dict[str, list[Any]] = {}
    for a in attempt_rows:
        failed.setdefault(a.step_key, []).append(a)
    return {
        "id": row.instance_id, "workflow": row.workflow, "status": row.status,
        "params": decode_json(row.params), "output": decode_json(row.output),
        "error": decode_json(row.error), "rollback": decode_json(row.rollback),
        "created": iso(row.created_at_ms), "started": iso(row.started_at_ms),
        "ended": iso(row.ended_at_ms),
        "steps": [_step_json(s, _attempts_json(s, failed.get(s.step_key, [])))
                  for s in step_rows],
    }


def _attempts_json(step: Any, failed: list[Any]) -> list[dict[str, Any]]:
    """A step's attempts: those that failed, from the attempt log, then its latest, from the
    step row, unless that one failed too."""
    attempts = [{"start": iso(a.started_at_ms), "end": iso(a.ended_at_ms),
                 "success": False, "error": public_error(decode_json(a.error))} for a in failed]
    if step.attempt < 1 or step.attempt in {a.attempt for a in failed}:
        return attempts
    ended = step.attempt_outcome is not None or step.state == h.SUCCEEDED
    success = step.attempt_outcome == "ok" or step.state == h.SUCCEEDED
    attempts.append({
        "start": iso(step.attempt_started_at_ms), "end": iso(step.ended_at_ms) if ended else None,
        "success": success if ended else None,
        "error": public_error(decode_json(step.error)) if ended and not success else None,
    })
    return attempts


def _output_json(s: Any) -> Any:
    """A succeeded step's output; a received event's time in ISO-8601, as every time in the
    status JSON (API.md §6), though history keeps it in milliseconds for the replay."""
    output = decode_json(s.output)
    if s.kind == h.WAIT_FOR_EVENT and isinstance(output, dict) and isinstance(
            output.get("timestamp"), int):
        output = {**output, "timestamp": iso(output["timestamp"])}
    return output


def _step_json(s: Any, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    done = s.completed_seq is not None
    return {
        "name": s.name, "count": s.count, "type": s.kind,
        "start": iso(s.started_at_ms), "end": iso(s.ended_at_ms) if done else None,
        "success": (s.state == h.SUCCEEDED) if done else None,
        "state": s.state, "attempts": attempts, "config": decode_json(s.config),
        "output": _output_json(s) if s.state == h.SUCCEEDED else None,
        "error": public_error(decode_json(s.error)) if s.state == h.FAILED else None,
        "wake_at": iso(s.wake_at_ms) if s.state in (h.WAITING, h.BACKOFF) else None,
    }


async def list_instances(
    conn: AsyncConnection, workflow: str, status: str | None, limit: int, after_pk: int | None
) -> list[dict[str, Any]]:
    """A page of instances, newest first, strictly older than ``after_pk`` (the cursor).

    Keyset pagination on the primary key: instances created while a caller pages through
    are newer than its cursor, so they never shift later pages (no duplicates, no gaps).
    """
    c = instances.c
    query = select(c.pk, c.instance_id, c.workflow, c.status, c.params, c.output, c.error,
                   c.rollback, c.created_at_ms, c.started_at_ms, c.ended_at_ms
                   ).where(c.workflow == workflow)
    if status is not None:
        query = query.where(c.status == status)
    if after_pk is not None:
        query = query.where(c.pk < after_pk)
    rows = (await conn.execute(query.order_by(c.pk.desc()).limit(limit))).all()
    return [{
        "pk": r.pk, "id": r.instance_id, "workflow": r.workflow, "status": r.status,
        "params": decode_json(r.params), "output": decode_json(r.output),
        "error": decode_json(r.error), "rollback": decode_json(r.rollback),
        "created": iso(r.created_at_ms),
        "started": iso(r.started_at_ms), "ended": iso(r.ended_at_ms), "steps": [],
    } for r in rows]


async def workflow_names(conn: AsyncConnection) -> list[str]:
    """Names of the workflows any worker has served."""
    return list((await conn.execute(select(workflows.c.name).order_by(workflows.c.name))).scalars())


def iso(ms: int | None) -> str | None:
    """ISO-8601 UTC text of a millisecond timestamp."""
    if ms is None:
        return None
    second, milli = divmod(ms, 1000)
    return f"{_iso_second(second)}.{milli:03d}Z"


@functools.lru_cache(maxsize=256)
def _iso_second(second: int) -> str:
    # Every lifecycle event carries a timestamp: formatting it from scratch was 4 % of a
    # busy worker's CPU, and the events of a second share all but the milliseconds.
    return datetime.fromtimestamp(second, tz=UTC).isoformat(timespec="seconds")[:-len("+00:00")]
