"""Statements run straight on the psycopg connection under a SQLAlchemy connection, for PostgreSQL hot paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from opentelemetry import trace
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, exc

from storeplane_runtime import telemetry

__all__ = ["driver_execute"]


def driver_execute(connection: Connection, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    """PostgreSQL: run `sql` (psycopg placeholders, `%(name)b` for binary) straight on the psycopg connection under
    `connection`, in its transaction, and return the psycopg cursor (rows as named tuples). Hot paths use it: the
    execution context SQLAlchemy builds around every statement cost more than the round trip. Errors come out as
    SQLAlchemy's (IntegrityError, OperationalError...), as from `Connection.execute`, and a connection found broken
    is invalidated so that the pool never hands it out again."""
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection), "PostgreSQL only"
    cursor = raw.cursor(row_factory=namedtuple_row)
    # SQLAlchemy's statement events do not see this: its own span, when spans are exported (one flag read if not).
    span = telemetry.statement_span(sql, "postgresql", raw.info.dbname) if telemetry.tracing_exported() else None
    try:
        cursor.execute(sql, params)
    except psycopg.Error as error:
        if span is not None:
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        broken = raw.closed or raw.broken
        if broken:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(
            sql,
            params,
            error,
            psycopg.Error,
            hide_parameters=connection.engine.hide_parameters,
            connection_invalidated=broken,
            dialect=connection.dialect,
        ) from error
    finally:
        if span is not None:
            span.end()
    return cursor
