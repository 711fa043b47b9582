"""Parsing of the duration forms the API accepts: ``"10 seconds"``, numbers, timedeltas."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from sdk.errors import ValidationError

Duration = str | int | float | timedelta

_UNITS_MS = {
    "millisecond": 1,
    "second": 1_000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 604_800_000,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$")


def parse_duration(value: Duration) -> timedelta:
    """Turn a duration in any accepted form into a ``timedelta``.

    Args:
        value: ``"250 milliseconds"``, ``"1 second"``, ``"5 minutes"``, ``"2 hours"``,
            ``"3 days"``, ``"1 week"`` (singular or plural), a number of seconds, or a
            ``timedelta``.

    Raises:
        ValidationError: for anything else, negative or non-finite values included.
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValidationError(f"invalid duration {value!r}: expected seconds, not a bool")
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValidationError(f"invalid duration {value!r}: not a finite number")
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        match = _PATTERN.match(value.lower())
        unit_ms = _UNITS_MS.get(match.group(2)) if match else None
        if match is None or unit_ms is None:
            raise ValidationError(
                f"invalid duration {value!r}: use e.g. '250 milliseconds', '10 seconds', "
                "'5 minutes', '2 hours', '3 days', '1 week', a number of seconds or a timedelta"
            )
        result = timedelta(milliseconds=float(match.group(1)) * unit_ms)
    else:
        raise ValidationError(f"invalid duration {value!r}: unsupported type {type(value)}")
    if result < timedelta(0):
        raise ValidationError(f"invalid duration {value!r}: negative")
    return result


def duration_ms(value: Duration) -> int:
    """Parse a duration and return it in whole milliseconds, rounded up (never shorter)."""
    delta = parse_duration(value)
    return math.ceil(delta / timedelta(milliseconds=1))
