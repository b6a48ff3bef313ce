"""Alembic, per service: upgrade to head, and refuse to serve on a schema this code does not know."""

from __future__ import annotations

import ast
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, inspect, text

from storeplane_runtime.tables import (
    held_events_table,
    idempotency_table,
    inbox_table,
    messaging_metadata,
    outbox_table,
)

__all__ = [
    "SchemaError",
    "create_held_events_table",
    "create_inbox_pruning_index",
    "create_messaging_tables",
    "drop_held_events_table",
    "drop_inbox_pruning_index",
    "drop_messaging_tables",
    "ensure_schema",
    "run_env",
    "upgrade",
]

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
# Alembic keeps its running context in module globals: one migration at a time per process.
_alembic_lock = threading.Lock()


class SchemaError(SystemExit):
    """The database schema cannot be served by this code (one-line message)."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str
    known: bool

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def config_for(script_location: Path, engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


# CPython 3.11's parser is not safe to run in two threads at once (SystemError "AST constructor recursion depth
# mismatch", seen here): the embedded stack starts its services on parallel threads, each reading its migrations.
_PARSING = threading.Lock()


def revisions(script_location: Path) -> dict[str, str | None]:
    """revision -> down_revision of every migration file, read without importing Alembic (fast start)."""
    found: dict[str, str | None] = {}
    for path in sorted((script_location / "versions").glob("*.py")):
        values: dict[str, object] = {}
        source = path.read_text()
        with _PARSING:
            tree = ast.parse(source)
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in {"revision", "down_revision"}
                and isinstance(node.value, ast.Constant)
            ):
                values[node.targets[0].id] = node.value.value
        if isinstance(values.get("revision"), str):
            down = values.get("down_revision")
            found[str(values["revision"])] = down if isinstance(down, str) else None
    return found


def head_of(script_location: Path) -> str:
    graph = revisions(script_location)
    heads = set(graph) - {down for down in graph.values() if down}
    if len(heads) != 1:
        raise SchemaError(f"migrations in {script_location} must have exactly one head, found {sorted(heads)}")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return None if row is None else str(row[0])


def state(engine: Engine, script_location: Path) -> SchemaState:
    graph = revisions(script_location)
    if not graph:
        raise SchemaError(f"no migrations found in {script_location}")
    head = head_of(script_location)
    current = current_revision(engine)
    return SchemaState(current=current, head=head, known=current is None or current in graph)


def upgrade(engine: Engine, script_location: Path, revision: str = "head") -> None:
    from alembic import command

    with _alembic_lock:
        command.upgrade(config_for(script_location, engine), revision)


def ensure_schema(engine: Engine, script_location: Path, *, service: str, auto_migrate: bool) -> SchemaState:
    """Upgrade when allowed; stop with one line when the schema is newer than this code or behind it."""
    found = state(engine, script_location)
    if not found.known:
        raise SchemaError(
            f"{service}: database schema revision {found.current} is unknown to this version "
            f"(newest known: {found.head}); refusing to start — deploy the newer version or restore the database"
        )
    if found.at_head:
        return found
    if not auto_migrate:
        raise SchemaError(
            f"{service}: database schema is at {found.current or 'nothing'}, this version needs {found.head}; "
            f"run `python -m {service} migrate` first"
        )
    log.info("migrating", extra={"service": service, "from": found.current, "to": found.head})
    upgrade(engine, script_location)
    return state(engine, script_location)


def run_env(target_metadata: MetaData | None = None) -> None:
    """Body of every service's migrations/env.py (online mode; SQLite gets batch ALTERs)."""
    from alembic import context

    engine: Engine | None = context.config.attributes.get("engine")
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas of a new deployment start at once: one upgrades while the others wait here, then find the
            # schema at head. Taken before Alembic looks for its version table; released by the commit below.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('storeplane.migrations'))"))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


# The tables of a service's first revision, named: a table added to `messaging_metadata` since has a revision of its
# own, and a fresh database must not get it from the first one.
_FIRST_MESSAGING_TABLES = [outbox_table, inbox_table, idempotency_table]


def create_messaging_tables() -> None:
    """For a service's first migration: the outbox, inbox and idempotency tables."""
    from alembic import op

    messaging_metadata.create_all(bind=op.get_bind(), tables=_FIRST_MESSAGING_TABLES)


def drop_messaging_tables() -> None:
    from alembic import op

    messaging_metadata.drop_all(bind=op.get_bind(), tables=_FIRST_MESSAGING_TABLES)


def create_held_events_table() -> None:
    """For a later migration: the events the in-process bus's consumers hold (waiting for a retry, parked)."""
    from alembic import op

    held_events_table.create(bind=op.get_bind())


def drop_held_events_table() -> None:
    from alembic import op

    held_events_table.drop(bind=op.get_bind())


def create_inbox_pruning_index() -> None:
    """For a later migration: the index the pruner deletes old inbox rows by (a database made since already has it:
    the first revision creates the inbox table with its indexes)."""
    from alembic import op

    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"], if_not_exists=True, postgresql_using="brin")


def drop_inbox_pruning_index() -> None:
    from alembic import op

    op.drop_index("ix_inbox_processed_at", "inbox", if_exists=True)
