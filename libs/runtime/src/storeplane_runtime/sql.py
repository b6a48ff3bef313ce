"""SQL helpers shared by every service's storage: which database a connection talks to, inserts that understand
ON CONFLICT on both, and PostgreSQL text run straight on the driver."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from storeplane_runtime.driver import driver_execute

__all__ = ["Db", "driver_sql", "insert_for", "is_postgres"]

Db = Connection | Session  # queries run on either; hot paths pass the unit of work's Connection (no ORM overhead)


def is_postgres(conn: Db | Engine) -> bool:
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    return bind.dialect.name == "postgresql"


def insert_for(conn: Db | Engine, table: Table) -> Any:
    """An INSERT that understands `.on_conflict_do_nothing()` / `.on_conflict_do_update()` on both databases."""
    return (pg_insert if is_postgres(conn) else sqlite_insert)(table)


def driver_sql(conn: Db, sql: str, params: Mapping[str, Any]) -> Any:
    """Run PostgreSQL text with psycopg placeholders (`%(name)b`: binary) as it is, in the same transaction and with
    SQLAlchemy's error translation (`storeplane_runtime.driver.driver_execute`); rows are named tuples."""
    return driver_execute(conn.connection() if isinstance(conn, Session) else conn, sql, params)
