"""Conversions between store rows and the replay executor's records."""

from __future__ import annotations

from typing import Any

import orjson

from engine import _history as h
from engine._codec import decode_json


def step_record(row: Any) -> h.StepRecord:
    """Build a :class:`StepRecord` from a ``warren_steps`` row."""
    return h.StepRecord(
        key=row.step_key, name=row.name, count=row.count, kind=row.kind,
        start_seq=row.start_seq, state=row.state, config=orjson.loads(row.config),
        started_at_ms=row.started_at_ms, completed_seq=row.completed_seq,
        attempt=row.attempt, attempt_outcome=row.attempt_outcome,
        output=decode_json(row.output), error=decode_json(row.error),
        wake_at_ms=row.wake_at_ms, ended_at_ms=row.ended_at_ms,
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
    }
