"""A step's attempts in the status JSON: the failures the attempt log keeps, then the latest
attempt as the step's own row describes it (engine/_store/_instances.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from engine import _history as h
from engine._store._instances import _attempts_json, iso

T = 1_700_000_000_000


def _step(**row: Any) -> Any:
    defaults = {"attempt": 1, "attempt_started_at_ms": T, "attempt_outcome": None,
                "state": h.RUNNING, "ended_at_ms": None, "error": None}
    return SimpleNamespace(**{**defaults, **row})


def _failed(attempt: int, start: int, end: int) -> Any:
    return SimpleNamespace(attempt=attempt, started_at_ms=start, ended_at_ms=end,
                           error='{"name": "E", "message": "boom"}')


BOOM = {"name": "E", "message": "boom"}


def test_a_running_attempt_has_no_end_yet() -> None:
    assert _attempts_json(_step(), []) == [
        {"start": iso(T), "end": None, "success": None, "error": None}]


def test_an_ended_attempt_not_yet_applied_shows_how_it_ended() -> None:
    ok = _step(attempt_outcome="ok", ended_at_ms=T + 5)
    assert _attempts_json(ok, []) == [
        {"start": iso(T), "end": iso(T + 5), "success": True, "error": None}]
    failed = _step(attempt_outcome="error", ended_at_ms=T + 5, error='{"name": "E", '
                                                                       '"message": "boom"}')
    assert _attempts_json(failed, []) == [
        {"start": iso(T), "end": iso(T + 5), "success": False, "error": BOOM}]


def test_a_retry_that_succeeded_follows_the_logged_failures() -> None:
    step = _step(attempt=3, attempt_started_at_ms=T + 30, state=h.SUCCEEDED, ended_at_ms=T + 31)
    attempts = _attempts_json(step, [_failed(1, T, T + 1), _failed(2, T + 10, T + 11)])
    assert [(a["start"], a["end"], a["success"]) for a in attempts] == [
        (iso(T), iso(T + 1), False), (iso(T + 10), iso(T + 11), False),
        (iso(T + 30), iso(T + 31), True)]
    assert [a["error"] for a in attempts] == [BOOM, BOOM, None]


def test_a_final_failure_is_listed_once() -> None:
    step = _step(attempt=2, state=h.FAILED, ended_at_ms=T + 11, error='{"name": "E"}')
    attempts = _attempts_json(step, [_failed(1, T, T + 1), _failed(2, T + 10, T + 11)])
    assert [a["start"] for a in attempts] == [iso(T), iso(T + 10)]


def test_steps_without_attempts_list_none() -> None:
    assert _attempts_json(_step(attempt=0, attempt_started_at_ms=None, state=h.WAITING), []) == []


def test_attempt_errors_show_name_and_message_only() -> None:
    """The engine's flags on a recorded error (API.md §6 shows {name, message})."""
    flagged = ('{"name": "AttemptAbandonedError", "message": "cut off", "abandoned": true, '
               '"non_retryable": true}')
    logged = SimpleNamespace(attempt=1, started_at_ms=T, ended_at_ms=T + 1, error=flagged)
    latest = _step(attempt=2, attempt_outcome="error", ended_at_ms=T + 5, error=flagged)
    attempts = _attempts_json(latest, [logged])
    assert [a["error"] for a in attempts] == [
        {"name": "AttemptAbandonedError", "message": "cut off"}] * 2
