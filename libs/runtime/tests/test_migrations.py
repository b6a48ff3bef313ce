"""Migrations upgrade a fresh database; a schema newer than the code stops the service with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from storeplane_runtime import migrations
from storeplane_runtime.db import Database

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ("checkout", "stock", "customer", "loyalty")


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_upgrade_a_fresh_database_to_head(service: str, database_url: str) -> None:
    db = Database(database_url)
    try:
        script = ROOT / "services" / service / "migrations"
        state = migrations.ensure_schema(db.engine, script, service=service, auto_migrate=True)
        assert state.at_head
        tables = set(inspect(db.engine).get_table_names())
        assert {"outbox", "inbox", "held_events", "idempotency_keys", "alembic_version"} <= tables
        # Running again is a no-op.
        assert migrations.ensure_schema(db.engine, script, service=service, auto_migrate=True).at_head
    finally:
        db.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_the_messaging_tables_the_migrations_create_match_the_model(service: str, database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storeplane_runtime.tables import messaging_metadata

    def messaging_only(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in messaging_metadata.tables

    db = Database(database_url)
    try:
        migrations.upgrade(db.engine, ROOT / "services" / service / "migrations")
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": messaging_only})
            assert compare_metadata(context, messaging_metadata) == []
    finally:
        db.dispose()


@pytest.mark.parametrize(("service", "before"), [("stock", "0003"), ("checkout", "0002")])
def test_a_database_from_before_the_pruner_gets_the_inbox_index(service: str, before: str, database_url: str) -> None:
    db = Database(database_url)
    try:
        script = ROOT / "services" / service / "migrations"
        migrations.upgrade(db.engine, script, before)
        with db.engine.connect() as conn:
            conn.execute(text("DROP INDEX ix_inbox_processed_at"))  # as a database made before the index existed
            conn.commit()
        assert "ix_inbox_processed_at" not in {i["name"] for i in inspect(db.engine).get_indexes("inbox")}
        assert migrations.ensure_schema(db.engine, script, service=service, auto_migrate=True).at_head
        assert "ix_inbox_processed_at" in {i["name"] for i in inspect(db.engine).get_indexes("inbox")}
        if not db.is_sqlite:  # BRIN: cheap to keep up on every applied event
            with db.engine.connect() as conn:
                definition = conn.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_inbox_processed_at'")
                ).scalar_one()
            assert "USING brin" in definition
    finally:
        db.dispose()


def test_schema_behind_without_auto_migrate_is_refused(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    with pytest.raises(migrations.SchemaError, match="run `python -m stock migrate` first"):
        migrations.ensure_schema(db.engine, ROOT / "services/stock/migrations", service="stock", auto_migrate=False)
    db.dispose()


def _stamp_unknown_revision(url: str) -> None:
    db = Database(url)
    migrations.upgrade(db.engine, ROOT / "services/stock/migrations")
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed9999'"))
    db.dispose()


def test_service_refuses_to_start_on_an_unknown_newer_schema(database_url: str, tmp_path: Path) -> None:
    _stamp_unknown_revision(database_url)
    env = {**os.environ, "DATABASE_URL": database_url, "GRPC_PORT": "0", "METRICS_PORT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "stock"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "f00dfeed9999" in lines[0] and "unknown" in lines[0]


def test_migrate_command_upgrades_and_exits(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    result = subprocess.run(
        [sys.executable, "-m", "loyalty", "migrate"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    db = Database(sqlite_url)
    assert migrations.state(db.engine, ROOT / "services/loyalty/migrations").at_head
    db.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_fast_revision_reader_agrees_with_alembic(service: str) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    script = ROOT / "services" / service / "migrations"
    cfg = Config()
    cfg.set_main_option("script_location", str(script))
    directory = ScriptDirectory.from_config(cfg)
    assert migrations.head_of(script) == directory.get_current_head()
    assert migrations.revisions(script) == {r.revision: r.down_revision for r in directory.walk_revisions()}


def test_replicas_starting_together_migrate_a_fresh_database_once(postgres_url: str, tmp_path: Path) -> None:
    """Pods of a new deployment start at once: each upgrades, one at a time, and none fails on the other's tables."""
    env = {**os.environ, "DATABASE_URL": postgres_url}
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "stock", "migrate"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in replicas]
    assert [code for code, _ in outcomes] == [0] * 4, "\n".join(err for _, err in outcomes)
    db = Database(postgres_url)
    try:
        assert migrations.state(db.engine, ROOT / "services/stock/migrations").at_head
    finally:
        db.dispose()
