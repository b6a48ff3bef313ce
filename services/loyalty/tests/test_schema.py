"""The loyalty schema: its migration creates exactly the tables storage declares, and goes back down."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from loyalty import main
from loyalty.storage.tables import metadata
from storeplane_runtime import migrations
from storeplane_runtime.app import migrations_dir
from storeplane_runtime.db import Database


def test_the_migration_matches_the_tables_and_goes_up_and_back_down(database_url: str) -> None:
    db = Database(database_url)
    script = migrations_dir(main.__file__)
    try:
        migrations.upgrade(db.engine, script)
        inspector = inspect(db.engine)
        for table in metadata.sorted_tables:
            assert {c["name"] for c in inspector.get_columns(table.name)} == {c.name for c in table.columns}, table
        config = migrations.config_for(script, db.engine)
        command.downgrade(config, "0003")
        assert not {t.name for t in metadata.sorted_tables} & set(inspect(db.engine).get_table_names())
        assert {"outbox", "inbox"} <= set(inspect(db.engine).get_table_names())
        migrations.upgrade(db.engine, script)  # and up again
        assert {t.name for t in metadata.sorted_tables} <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
