"""Sizes of ``IN (...)`` lists that keep the number of distinct SQL statements small.

An ``IN`` list renders one placeholder per value, so every batch size is a different
statement, and on PostgreSQL a different prepared statement. With batches of 1 to 100 a
connection's statement cache (100 entries) thrashes and most executions pay an extra
round trip to prepare. Lists padded to a power of two give at most eight shapes each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def padded(values: Iterable[T]) -> list[T]:
    """``values`` as a list whose length is a power of two, the last value repeated (an
    ``IN`` list means the same with duplicates)."""
    items = list(values)
    if not items:
        return items
    size = 1 << (len(items) - 1).bit_length()
    return items + [items[-1]] * (size - len(items))
