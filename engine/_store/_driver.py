"""Statements run on asyncpg directly (``Database.driver``), compiled once from SQL text.

Each is one statement in autocommit, so it is its own transaction; one that finds it must
not be written calls ``warren_abort``, which rolls the whole statement back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import TextClause
from sqlalchemy.engine import make_url

_ASYNCPG = make_url("postgresql+asyncpg://").get_dialect()()

ABORT_SQLSTATE = "WA001"
"""The SQLSTATE of ``warren_abort``: a statement that found it must not be written."""

ABORT_FUNCTION = f"""
CREATE OR REPLACE FUNCTION warren_abort(reason text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '{ABORT_SQLSTATE}', MESSAGE = reason;
END
$$
"""
"""Created with the schema on PostgreSQL: lets one statement roll itself back."""


class StatementAborted(Exception):
    """The statement called ``warren_abort``: nothing of it was written."""


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A SQL text compiled once for asyncpg: positional ``$n`` SQL and its parameter names,
    for statements run on :meth:`Database.driver` connections."""

    sql: str
    names: tuple[str, ...]

    @classmethod
    def compile(cls, clause: TextClause) -> DriverStatement:
        compiled = clause.compile(dialect=_ASYNCPG)
        return cls(str(compiled), tuple(compiled.positiontup or ()))

    async def fetch(self, conn: asyncpg.Connection, params: Mapping[str, Any]) -> list[Any]:
        """Run the statement with ``params`` (by name) on a driver connection; its rows.

        Raises:
            StatementAborted: It called ``warren_abort`` (nothing was written).
        """
        try:
            return list(await conn.fetch(self.sql, *(params[name] for name in self.names)))
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == ABORT_SQLSTATE:
                raise StatementAborted(str(exc)) from None
            raise
