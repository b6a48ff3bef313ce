"""Alembic, per service: upgrade to head, and refuse to serve on a schema this code does not know."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData

from storeplane_runtime.outbox import messaging_metadata

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
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


def state(engine: Engine, script_location: Path) -> SchemaState:
    script = ScriptDirectory.from_config(config_for(script_location, engine))
    head = script.get_current_head()
    if head is None:
        raise SchemaError(f"no migrations found in {script_location}")
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or _known(script, current)
    return SchemaState(current=current, head=head, known=known)


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:
        return False


def upgrade(engine: Engine, script_location: Path, revision: str = "head") -> None:
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
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


def create_messaging_tables() -> None:
    """For a service's first migration: the outbox, inbox and idempotency tables."""
    from alembic import op

    messaging_metadata.create_all(bind=op.get_bind())


def drop_messaging_tables() -> None:
    from alembic import op

    messaging_metadata.drop_all(bind=op.get_bind())
