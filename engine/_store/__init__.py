"""The SQL store: one schema, one query layer shared by PostgreSQL and SQLite."""
