"""Statements run on asyncpg directly (``Database.driver``), compiled once from SQL text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause
from sqlalchemy.engine import make_url

_ASYNCPG = make_url("postgresql+asyncpg://").get_dialect()()


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

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``params`` (by name)."""
        return [params[name] for name in self.names]
