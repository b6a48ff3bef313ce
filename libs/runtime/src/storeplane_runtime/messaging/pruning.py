"""Housekeeping of the tables every service database shares: rows past their retention are deleted in small batches,
each in a short transaction of its own, so that pruning never holds locks that calls would wait for."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Column, DateTime, Integer, bindparam, text

from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database
from storeplane_runtime.idempotency import RETENTION as IDEMPOTENCY_RETENTION
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.sql import is_postgres
from storeplane_runtime.tables import idempotency_table, inbox_table
from storeplane_runtime.telemetry import ROWS_PRUNED
from storeplane_runtime.workers import ThreadWorker

log = logging.getLogger(__name__)

# One batch: the physical addresses (PostgreSQL ctid, SQLite rowid) of at most `limit` rows past the cutoff, then a
# delete by address. On PostgreSQL the rows are locked as they are picked and rows locked by anyone else are skipped
# (a concurrent call, or the pruner of another replica): pruning never waits, and replicas share the work.
_PG_DELETE = (
    "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM {table} WHERE {column} < :cutoff LIMIT :limit FOR UPDATE SKIP LOCKED))"
)
_SQLITE_DELETE = "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < :cutoff LIMIT :limit)"


def delete_before(
    database: Database,
    column: Column[datetime],
    cutoff: datetime,
    *,
    batch_size: int,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Delete the rows of `column`'s table whose `column` is before `cutoff` (NULL: kept), at most `batch_size` per
    transaction, until none is left or `stopping()`; returns how many."""
    template = _PG_DELETE if is_postgres(database.engine) else _SQLITE_DELETE
    statement = text(template.format(table=column.table.name, column=column.name)).bindparams(
        bindparam("cutoff", type_=DateTime(timezone=True)), bindparam("limit", type_=Integer)
    )
    total = 0
    while not stopping():
        with database.engine.begin() as conn:
            deleted = conn.execute(statement, {"cutoff": cutoff, "limit": batch_size}).rowcount
        total += deleted
        if deleted < batch_size:
            break
    return total


def record_pruned(service: str, table: str, count: int) -> None:
    """Count and log the rows a pruning pass deleted."""
    if count:
        ROWS_PRUNED.labels(service, table).inc(count)
        log.info("pruned", extra={"service": service, "table": table, "rows": count})


class Pruner(ThreadWorker):
    """A `Worker`: at start and every `prune_interval_seconds`, forgets idempotency keys older than
    `idempotency.RETENTION` and inbox rows older than `inbox_retention_hours`."""

    def __init__(self, database: Database, *, service: str, settings: MessagingSettings | None = None) -> None:
        super().__init__()
        self.database = database
        self.service = service
        self.settings = settings or MessagingSettings()
        self.thread_name = f"pruner-{service}"
        self.passes = 0  # passes completed (tests read it)

    def prune(self) -> dict[str, int]:
        """One pass; returns the rows deleted per table."""
        now = utcnow()
        retention = [
            (idempotency_table.c.created_at, IDEMPOTENCY_RETENTION),
            (inbox_table.c.processed_at, timedelta(hours=self.settings.inbox_retention_hours)),
        ]
        deleted: dict[str, int] = {}
        for column, keep in retention:
            count = delete_before(
                self.database,
                column,
                now - keep,
                batch_size=self.settings.prune_batch_size,
                stopping=self._stopping.is_set,
            )
            record_pruned(self.service, column.table.name, count)
            deleted[column.table.name] = count
        return deleted

    def _run(self) -> None:
        while True:
            try:
                self.prune()
                self.passes += 1
            except Exception as exc:  # the database may be away for a while: the next pass tries again
                log.warning(
                    "pruning failed, trying again at the next pass",
                    extra={"service": self.service, "error": f"{type(exc).__name__}: {exc}"},
                )
            if self._stopping.wait(self.settings.prune_interval_seconds):
                return
