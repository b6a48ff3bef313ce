"""Which constraint a failed INSERT or UPDATE broke, on PostgreSQL and SQLite alike, so a unique violation can become
the domain error that names the right field instead of an INTERNAL status.

Kit candidate (`storeplane_runtime.sql`): checkout and loyalty have unique keys of their own."""

from __future__ import annotations

import re

from sqlalchemy import MetaData, PrimaryKeyConstraint, UniqueConstraint
from sqlalchemy.exc import IntegrityError

__all__ = ["violated_constraint"]

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: ((?:\w+\.\w+(?:, )?)+)")


def violated_constraint(error: IntegrityError, metadata: MetaData) -> str | None:
    """The name of the unique or primary key constraint `error` reports (PostgreSQL names it; SQLite names the
    columns, looked up among `metadata`'s constraints); None for any other integrity error."""
    diag = getattr(error.orig, "diag", None)
    if diag is not None:  # psycopg
        sqlstate = getattr(error.orig, "sqlstate", None)
        name = getattr(diag, "constraint_name", None)
        return name if sqlstate == "23505" and name else None
    found = _SQLITE_UNIQUE.search(str(error.orig))
    if found is None:
        return None
    pairs = [part.split(".") for part in found.group(1).split(", ")]
    table_name = pairs[0][0]
    columns = {column for _, column in pairs}
    table = metadata.tables.get(table_name)
    if table is None:
        return None
    for constraint in table.constraints:
        if (
            isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint)
            and {c.name for c in constraint.columns} == columns
        ):
            return str(constraint.name)
    return None
