"""The ``INSERT`` construct of each supported dialect: the one that has ``ON CONFLICT``.

SQLAlchemy's generic ``insert`` has no ``on_conflict_do_nothing`` / ``on_conflict_do_update``;
PostgreSQL's and SQLite's own constructs have both, with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

CONFLICT_INSERTS: dict[str, Callable[[Table], Any]] = {
    "postgresql": pg_insert, "sqlite": sqlite_insert,
}
"""By dialect name; statements built once at import are kept in a dict with the same keys."""


def conflict_insert(conn: AsyncConnection) -> Callable[[Table], Any]:
    """The ``INSERT`` construct of the dialect ``conn`` speaks."""
    return CONFLICT_INSERTS[conn.dialect.name]
