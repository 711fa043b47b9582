"""Conversions between store rows and the replay executor's records."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Column

from engine import _history as h
from engine._codec import decode_json

STEP_RECORD_COLUMNS = (
    "step_key", "name", "count", "kind", "start_seq", "state", "config", "started_at_ms",
    "completed_seq", "attempt", "attempt_outcome", "output", "error", "wake_at_ms",
    "ended_at_ms", "attempt_started_at_ms", "attempt_token",
)
"""The ``warren_steps`` columns :func:`step_record` reads, in the order it reads them."""


def step_record(row: Sequence[Any]) -> h.StepRecord:
    """Build a :class:`StepRecord` from the values of :data:`STEP_RECORD_COLUMNS`.

    Positional, because a turn reads every step of its instance's history and SQLAlchemy's
    access by name is slow for ``count`` (also the name of a tuple method): by name, this
    was a third of a worker's time at 1,000 steps of history.
    """
    (key, name, count, kind, start_seq, state, config, started_at_ms, completed_seq, attempt,
     attempt_outcome, output, error, wake_at_ms, ended_at_ms, attempt_started_at_ms,
     token) = row
    return h.StepRecord(
        key=key, name=name, count=count, kind=kind, start_seq=start_seq, state=state,
        config=orjson.loads(config), started_at_ms=started_at_ms, completed_seq=completed_seq,
        attempt=attempt, attempt_outcome=attempt_outcome, output=decode_json(output),
        error=decode_json(error), wake_at_ms=wake_at_ms, ended_at_ms=ended_at_ms,
        attempt_started_at_ms=attempt_started_at_ms, token=token,
    )


def step_values(record: h.StepRecord) -> dict[str, Any]:
    """Column values of a record (without its primary key)."""
    return {
        "name": record.name, "count": record.count, "kind": record.kind,
        "start_seq": record.start_seq, "completed_seq": record.completed_seq,
        "state": record.state, "attempt": record.attempt,
        "attempt_outcome": record.attempt_outcome,
        "output": None if record.output is None else orjson.dumps(record.output).decode(),
        "error": None if record.error is None else orjson.dumps(record.error).decode(),
        "config": orjson.dumps(record.config).decode(),
        "wake_at_ms": record.wake_at_ms, "started_at_ms": record.started_at_ms,
        "ended_at_ms": record.ended_at_ms,
        "attempt_started_at_ms": record.attempt_started_at_ms,
    }


def dedup_key(message_id: str | None, column: Column[Any]) -> str | None:
    """A message id as ``column`` stores it to de-duplicate: as sent if it fits, else its
    SHA-256 (AMQP allows 255 characters; de-duplicating needs only equality)."""
    length = column.type.length  # type: ignore[attr-defined]
    if message_id is None or len(message_id) <= length:
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest()[:length]
