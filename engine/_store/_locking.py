"""Row locking in a fixed order, so batched updates from many workers cannot deadlock.

PostgreSQL locks the rows of a multi-row ``UPDATE`` in whatever order its plan visits them;
two workers updating overlapping batches in different orders deadlock. Every batched update
therefore targets rows through :func:`locked`: a sub-select that takes the row locks in
primary-key order (``FOR UPDATE``; SQLite, having one writer, ignores it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, select
from sqlalchemy.sql import ColumnElement, Subquery


def locked(table: Table, *conditions: ColumnElement[bool]) -> Subquery:
    """The primary keys of ``table`` rows matching ``conditions``, locked in key order."""
    keys = list(table.primary_key.columns)
    return select(*keys).where(*conditions).order_by(*keys).with_for_update().subquery()


def joined(table: Table, subquery: Subquery) -> ColumnElement[bool]:
    """Join condition of ``table`` to a :func:`locked` sub-select (for ``UPDATE ... FROM``)."""
    return and_(*(col == subquery.c[col.name] for col in table.primary_key.columns))


def sorted_params(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """Parameter sets of an ``executemany`` in lock order (by the given key parameters)."""
    return sorted(rows, key=lambda row: tuple(row[k] for k in keys))
