"""Timestamps in status JSON and lifecycle events: ISO-8601 UTC with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine._store._instances import iso

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("ms", [0, 1, 999, 1000, 1_763_776_543_123, 1_763_776_543_999,
                                1_763_776_544_000, -1, -1001, 253_402_300_799_999])
def test_iso_is_exact_to_the_millisecond(ms: int) -> None:
    expected = (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
    assert iso(ms) == expected.replace("+00:00", "Z")


def test_iso_of_nothing_is_nothing() -> None:
    assert iso(None) is None


def test_timestamps_within_one_second_differ_only_in_milliseconds() -> None:
    # The formatted second is cached: a cached prefix must not leak into the next second.
    assert [iso(ms) for ms in (1_000_999, 1_001_000, 1_000_500)] == [
        "1970-01-01T00:16:40.999Z", "1970-01-01T00:16:41.000Z", "1970-01-01T00:16:40.500Z"]
