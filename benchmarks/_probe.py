"""Read-only queries on Warren's tables: is it done yet, and what did the steps record?

The benchmark watches completion in SQL directly instead of through ``Instance.status()``:
the status call builds the whole status JSON (steps, attempts) with SQLAlchemy, and
``wait_for_status`` backs off up to 250 ms, which would add the client's cost to the
numbers. One indexed ``SELECT`` per poll keeps the watcher's load negligible. The peers
are watched the same way (their own tables, same poll interval).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import asyncpg
import orjson

from benchmarks._wait import until

_PLACEHOLDER = re.compile(r"\$(\d+)")


class Probe(Protocol):
    """What the scenarios ask of a store."""

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...
    async def close(self) -> None: ...


class PgProbe:
    """Queries over one asyncpg connection (PostgreSQL)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()  # one connection: a sampler and a waiter take turns
        self.queries = 0  # each is a transaction of its own; see pg_activity

    @classmethod
    async def connect(cls, dsn: str) -> PgProbe:
        return cls(await asyncpg.connect(dsn, timeout=10))

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._lock:
            self.queries += 1
            return [tuple(r) for r in await self._conn.fetch(sql, *args)]

    @asynccontextmanager
    async def instance_writes_held(self) -> AsyncIterator[None]:
        """Hold every write to the instance table until the block ends; reads go on.

        A start barrier for worker processes: a worker's first turn writes its instances,
        so each worker that is ready waits there, and all of them start together when the
        block ends. Worker start-up writes no instance row, so it is not held.
        """
        async with self._lock, self._conn.transaction():
            self.queries += 1
            await self._conn.execute("LOCK TABLE warren_instances IN SHARE MODE")
            yield

    async def close(self) -> None:
        await self._conn.close()


class SqliteProbe:
    """Queries on the embedded store's SQLite file, run inline on the loop.

    A one-row indexed read on a WAL database takes microseconds and never waits for the
    writer, so a thread hop per poll would cost more than the query itself.
    """

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, timeout=5, check_same_thread=False)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(_PLACEHOLDER.sub(r"?\1", sql), args).fetchall())

    async def close(self) -> None:
        self._conn.close()


async def status_counts(probe: Probe, workflow: str) -> dict[str, int]:
    """How many instances of ``workflow`` are in each status."""
    rows = await probe.fetch(
        "SELECT status, count(*) FROM warren_instances WHERE workflow = $1 GROUP BY status",
        workflow,
    )
    return {str(s): int(c) for s, c in rows}


async def instance_state(probe: Probe, workflow: str, instance_id: str
                         ) -> tuple[str, Any] | None:
    """``(status, output)`` of one instance, or ``None`` if it is not stored yet."""
    rows = await probe.fetch(
        "SELECT status, output FROM warren_instances WHERE workflow = $1 AND instance_id = $2",
        workflow, instance_id,
    )
    if not rows:
        return None
    status, output = rows[0]
    return str(status), None if output is None else orjson.loads(output)


async def span_ms(probe: Probe, workflow: str) -> tuple[int, int]:
    """``(first created_at_ms, last ended_at_ms)`` over the workflow's instances."""
    rows = await probe.fetch(
        "SELECT min(created_at_ms), max(ended_at_ms) FROM warren_instances WHERE workflow = $1",
        workflow,
    )
    first, last = rows[0]
    return int(first or 0), int(last or 0)


async def errors(probe: Probe, workflow: str, limit: int = 3) -> list[str]:
    """A few errors of errored instances, for a clear failure message."""
    rows = await probe.fetch(
        "SELECT instance_id, error FROM warren_instances WHERE workflow = $1 "
        "AND status = 'errored' LIMIT " + str(int(limit)), workflow,
    )
    return [f"{i}: {e}" for i, e in rows]


async def outputs(probe: Probe, workflow: str) -> list[tuple[str, Any]]:
    """``(instance_id, output)`` of the workflow's complete instances."""
    rows = await probe.fetch(
        "SELECT instance_id, output FROM warren_instances WHERE workflow = $1 "
        "AND status = 'complete'", workflow,
    )
    return [(str(i), orjson.loads(o) if o is not None else None) for i, o in rows]


async def sleep_records(probe: Probe, workflow: str, sleep_step: str = "nap#1"
                        ) -> list[tuple[Any, int, Any]]:
    """``(params, sleep started_at_ms, output)`` of each complete instance.

    The sleep's ``started_at_ms`` is the engine's clock at the turn that decided the sleep:
    the moment its duration is counted from.
    """
    rows = await probe.fetch(
        "SELECT i.params, s.started_at_ms, i.output FROM warren_instances i "
        "JOIN warren_steps s ON s.instance_pk = i.pk AND s.step_key = $2 "
        "WHERE i.workflow = $1 AND i.status = 'complete'", workflow, sleep_step,
    )
    return [(orjson.loads(p), int(t), orjson.loads(o)) for p, t, o in rows]


async def step_count(probe: Probe, workflow: str, states: Sequence[str]) -> int:
    """Steps of the workflow's instances in any of ``states``."""
    marks = ", ".join(f"${i + 2}" for i in range(len(states)))
    rows = await probe.fetch(
        "SELECT count(*) FROM warren_steps s JOIN warren_instances i ON i.pk = s.instance_pk "
        f"WHERE i.workflow = $1 AND s.state IN ({marks})", workflow, *states,
    )
    return int(rows[0][0])


async def pg_activity(probe: PgProbe) -> dict[str, int]:
    """Cumulative transaction and row counters of the probe's database (pg_stat_database).

    Differences of two readings give SQL transactions and rows written per step, the same
    way for every engine on PostgreSQL. The probe's own polls are subtracted; PostgreSQL
    publishes a backend's counters when it goes idle or exits, so read the final figures
    after the workers stopped.
    """
    rows = await probe.fetch(
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
        "(SELECT COALESCE(sum(n_tup_hot_upd), 0) FROM pg_stat_user_tables) "
        "FROM pg_stat_database WHERE datname = current_database()")
    commit, rollback, inserted, updated, deleted, hot = (int(x) for x in rows[0])
    # Updates that wrote no index entry (HOT): the rest cost an insert into each index.
    # (Counted over the user tables; ``updated`` also counts the rare catalog updates.)
    return {"commits": commit - probe.queries, "rollbacks": rollback, "inserted": inserted,
            "updated": updated, "hot_updated": hot, "deleted": deleted}


async def wait_for_no_other_connection(probe: PgProbe, limit_s: float = 20.0) -> None:
    """Wait until the probe is the only connection to its database.

    PostgreSQL publishes a backend's counters at most once a second while it works, and
    when it exits: a :func:`pg_activity` reading holds all that closed connections wrote
    only once their backends are gone.
    """
    async def alone() -> bool:
        rows = await probe.fetch(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return int(rows[0][0]) == 0

    await until(alone, limit_s=limit_s, interval=0.01, what="the other connections to close")


def activity_per_step(before: dict[str, int], after: dict[str, int], steps: int
                      ) -> dict[str, float]:
    """Per-step differences of two :func:`pg_activity` readings (to 3 decimals: Warren
    commits once per 30-60 steps, so 2 decimals would not tell batch sizes apart)."""
    return {f"{k}_per_step": round((after[k] - before[k]) / steps, 3) for k in before}
