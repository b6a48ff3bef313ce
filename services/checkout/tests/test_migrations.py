"""Migration 0004 creates exactly the tables storage describes (names and columns), and its downgrade removes them
again, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect

from checkout import storage
from storeplane_runtime import migrations
from storeplane_runtime.db import Database

MIGRATIONS = Path(__file__).parents[1] / "migrations"
OWN = set(storage.metadata.tables)


def test_upgrade_matches_storage_and_downgrade_removes_it(database_url: str) -> None:
    db = Database(database_url)
    try:
        migrations.upgrade(db.engine, MIGRATIONS)
        schema = inspect(db.engine)
        assert set(schema.get_table_names()) >= OWN
        for name, table in storage.metadata.tables.items():
            assert {c["name"] for c in schema.get_columns(name)} == {c.name for c in table.columns}, name
            assert {i["name"] for i in schema.get_indexes(name)} >= {i.name for i in table.indexes}, name
        command.downgrade(migrations.config_for(MIGRATIONS, db.engine), "0003")
        left = set(inspect(db.engine).get_table_names())
        assert not OWN & left and {"outbox", "inbox", "idempotency_keys"} <= left
        migrations.upgrade(db.engine, MIGRATIONS)
        assert set(inspect(db.engine).get_table_names()) >= OWN
    finally:
        db.dispose()
