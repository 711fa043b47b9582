"""How the store lays out its tables on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from engine._store._database import Database


async def _catalog(postgres_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = Database(postgres_url)
    try:
        await db.create_schema()
        async with db.driver() as conn:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await db.close()


@pytest.mark.postgres
async def test_rewritten_tables_leave_room_for_in_place_updates(postgres_url: str) -> None:
    """Instance rows are rewritten by every turn: their pages keep 30 % free so that
    PostgreSQL can update them without an insert into each index (HOT); step rows cannot be
    HOT-updated and attempt rows are written once (see ``engine._store._schema``): packed."""
    rows = await _catalog(
        postgres_url, "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[])",
        ["warren_instances", "warren_step_attempts", "warren_steps"])
    assert dict(rows) == {"warren_instances": ["fillfactor=70"],
                          "warren_step_attempts": None, "warren_steps": None}


@pytest.mark.postgres
async def test_instance_rows_carry_only_the_indexes_queries_use(postgres_url: str) -> None:
    """A turn that changes an instance's status inserts into every index of the table, so
    each index must serve a query: the key, the id lookup, the two listings, retention,
    slot counts, lost creates, the admission queue and expired leases."""
    rows = await _catalog(
        postgres_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'warren_instances'")
    assert {name for (name,) in rows} == {
        "warren_instances_pkey", "ux_instances_workflow_id", "ix_instances_list",
        "ix_instances_list_status", "ix_instances_ended", "ix_instances_slot",
        "ix_instances_unturned", "ix_instances_admission", "ix_instances_lease"}
