"""How the store lays out its tables on PostgreSQL."""

from __future__ import annotations

import pytest

from engine._store._database import Database


@pytest.mark.postgres
async def test_rewritten_tables_leave_room_for_in_place_updates(postgres_url: str) -> None:
    """Instance and attempt rows are rewritten by every turn: their pages keep 30 % free so
    that PostgreSQL can update them without an insert into each index (HOT); step rows
    cannot be HOT-updated (see ``engine._store._schema``) and are packed."""
    db = Database(postgres_url)
    try:
        await db.create_schema()
        async with db.driver() as conn:
            rows = await conn.fetch(
                "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[])",
                ["warren_instances", "warren_step_attempts", "warren_steps"])
    finally:
        await db.close()
    options = {r["relname"]: r["reloptions"] for r in rows}
    assert options == {"warren_instances": ["fillfactor=70"],
                       "warren_step_attempts": ["fillfactor=70"], "warren_steps": None}
