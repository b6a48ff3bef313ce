"""The outbox relay: publishes committed outbox rows, in id order, and marks them sent once the bus confirmed them."""

# One relay thread per service process. It wakes right after a commit that wrote events (`Database.on_events_committed`)
# and otherwise polls. On PostgreSQL several replicas may run: each claims its batch with `FOR UPDATE SKIP LOCKED` and
# keeps the lock until the rows are marked sent, so a row is published by one replica only. A crash between
# publishing and marking sent publishes that batch again: consumers deduplicate on the event id (inbox).

from __future__ import annotations

import contextvars
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

from opentelemetry import propagate, trace
from sqlalchemy import Connection, bindparam, func, select, update

from storeplane_runtime import telemetry
from storeplane_runtime.clock import as_utc, utcnow
from storeplane_runtime.db import Database
from storeplane_runtime.driver import driver_execute
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.messaging.pruning import delete_before, record_pruned
from storeplane_runtime.sql import is_postgres
from storeplane_runtime.tables import outbox_table

log = logging.getLogger(__name__)
tracer = trace.get_tracer("storeplane.messaging")

# What a `Publisher` reports per event besides an error text: the bus took it, or no queue is bound to its type.
OK = "ok"
UNROUTABLE = "unroutable"

# Marks rows sent (error NULL) or unroutable: a constant statement (array parameter) the server keeps prepared,
# whatever the batch size, run straight on the driver in the pass's transaction. It also makes that transaction
# commit without waiting for its WAL flush (`synchronous_commit` off, for this transaction only): the relay's commit
# is then not one more fsync on the way from a producer's commit to the consumer. Losing such a mark in a database
# crash only publishes those rows again, which consumers deduplicate (as after a relay crash).
_PG_MARK = (
    "WITH settings AS (SELECT set_config('synchronous_commit', 'off', true))"
    f" UPDATE {outbox_table.name} SET sent_at = %(now)s, last_error = coalesce(%(error)s, last_error) FROM settings"
    " WHERE id = ANY(CAST(%(ids)b AS bigint[]))"
)
_UNROUTABLE = "unroutable: no queue bound to this event type"
_COLUMNS = ("id", "event_id", "event_type", "source", "subject", "store_id", "payload", "headers", "occurred_at")
_ID, _TYPE = 0, 2
_SELECT_UNSENT = (
    select(*(outbox_table.c[name] for name in _COLUMNS))
    .where(outbox_table.c.sent_at.is_(None))
    .order_by(outbox_table.c.id)
    .limit(bindparam("limit"))
)
_PG_SELECT_UNSENT = (
    f"SELECT {', '.join(_COLUMNS).replace('headers', 'headers::text')} FROM {outbox_table.name} WHERE sent_at IS NULL"
    " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
)


class Publisher(Protocol):
    """Where the relay sends events: RabbitMQ or the in-process bus."""

    def connect(self) -> None:
        """Make sure a publish can be attempted; raises when the bus is unreachable."""

    def publish(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Publish all, wait for the bus to take responsibility; per envelope OK, UNROUTABLE or an error text."""
        ...

    def idle(self, seconds: float, wake: threading.Event) -> None:
        """Wait up to `seconds` (keeping the connection alive) or until `wake` is set and `interrupt` called."""

    def interrupt(self) -> None:
        """Cut `idle` short (thread-safe)."""

    def close(self) -> None: ...


def coalesce_pause(settings: MessagingSettings, since_last_start: float, last_took: float) -> float:
    """How long a relay woken by a commit waits before its next pass: passes start at least
    `outbox_coalesce_seconds` apart, or `outbox_coalesce_factor` times the last pass's duration (at most
    `outbox_coalesce_max_seconds`) when that is longer."""
    stretched = min(settings.outbox_coalesce_factor * last_took, settings.outbox_coalesce_max_seconds)
    return max(settings.outbox_coalesce_seconds, stretched) - since_last_start


class OutboxRelay:
    """A `Worker`: publishes the outbox of one service's database through a `Publisher`."""

    def __init__(
        self,
        database: Database,
        publisher: Publisher,
        *,
        service: str,
        settings: MessagingSettings | None = None,
    ) -> None:
        self.database = database
        self.publisher = publisher
        self.service = service
        self.settings = settings or MessagingSettings()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_stats = 0.0
        self._next_prune = 0.0
        self._marked_since_vacuum = 0
        self._last_vacuum = 0.0
        self.vacuums = 0  # VACUUMs run by this relay (tests read it)
        self.published = 0  # rows marked sent by this relay (tests and benchmarks read it)
        database.on_events_committed(self.wake)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(  # in the starter's context (spans.current_service)
            target=contextvars.copy_context().run, args=(self._run,), name=f"outbox-relay-{self.service}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.publisher.close()

    def wake(self) -> None:
        self._wake.set()
        self.publisher.interrupt()

    def _run(self) -> None:
        failures = 0
        last_pass = float("-inf")
        took = 0.0
        backlog = False
        while not self._stopping.is_set():
            if not backlog:  # woken by a commit: let the commits of the next few milliseconds join this pass
                pause = coalesce_pause(self.settings, time.monotonic() - last_pass, took)
                if pause > 0 and self._stopping.wait(pause):
                    break
            last_pass = time.monotonic()
            self._wake.clear()
            try:
                self._housekeeping()
                sent = self.relay_once()
                took = time.monotonic() - last_pass
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(self.settings.reconnect_max_seconds, 0.2 * 2 ** min(failures, 10))
                delay *= random.uniform(0.5, 1.0)
                log.warning(
                    "outbox relay cannot publish, retrying",
                    extra={"service": self.service, "error": f"{type(exc).__name__}: {exc}", "retry_in": delay},
                )
                self._stopping.wait(delay)
                continue
            backlog = sent >= self.settings.outbox_batch_size
            if backlog or self._wake.is_set():
                continue
            self.publisher.idle(self.settings.outbox_poll_seconds, self._wake)

    def relay_once(self) -> int:
        """Publish one batch of unsent rows; returns how many rows were taken (0 when the outbox is drained)."""
        self.publisher.connect()
        if self.database.is_sqlite:
            # One relay per SQLite file (embedded); keep the write lock only for the short reads and updates.
            with self.database.engine.connect() as conn:
                with conn.begin():
                    rows = self._select(conn)
                if not rows:
                    return 0
                results = self._publish(_envelopes(rows))
                with conn.begin():
                    self._mark(conn, rows, results)
                return len(rows)
        with self.database.engine.connect() as conn, conn.begin():
            rows = self._select(conn)
            if not rows:
                return 0
            results = self._publish(_envelopes(rows))
            self._mark(conn, rows, results)
            return len(rows)

    def _publish(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Publish through the publisher; when spans are exported, each event in a PRODUCER span `publish pos.events`
        (messaging semantic conventions), a child of the operation that wrote the event (its `traceparent`), whose
        context the message carries on: the consumers' spans are its children."""
        if not telemetry.tracing_exported():
            return self.publisher.publish(envelopes)
        system = getattr(self.publisher, "messaging_system", "rabbitmq")
        spans: list[trace.Span] = []
        sent: list[Envelope] = []
        for envelope in envelopes:
            span = tracer.start_span(
                f"publish {telemetry.DESTINATION}",
                context=propagate.extract(envelope.trace_headers),
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": system,
                    "messaging.operation.name": "publish",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": telemetry.DESTINATION,
                    "messaging.rabbitmq.destination.routing_key": envelope.event_type,
                    "messaging.message.id": envelope.event_id,
                    "messaging.batch.message_count": len(envelopes),
                },
            )
            spans.append(span)
            if span.is_recording():
                headers = dict(envelope.trace_headers)
                propagate.inject(headers, context=trace.set_span_in_context(span))
                envelope = replace(envelope, trace_headers=headers)
            sent.append(envelope)
        try:
            results = self.publisher.publish(sent)
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                span.end()
            raise
        for span, result in zip(spans, results, strict=True):
            if result != OK:
                span.set_status(trace.StatusCode.ERROR, result)
            span.end()
        return results

    def _select(self, conn: Connection) -> Sequence[Sequence[Any]]:
        """Unsent rows as tuples of `_COLUMNS`, oldest first; on PostgreSQL locked (SKIP LOCKED) for this pass."""
        if is_postgres(conn):
            # Straight from the driver, in the connection's transaction: plain tuples, no per-row wrapping, and the
            # headers as text (a unit of work gives all its events the same headers: parsed once per batch).
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(_PG_SELECT_UNSENT, {"limit": self.settings.outbox_batch_size})
                rows: Sequence[Sequence[Any]] = cursor.fetchall()
                return rows
            finally:
                cursor.close()
        return conn.execute(_SELECT_UNSENT, {"limit": self.settings.outbox_batch_size}).all()

    def _mark(self, conn: Connection, rows: Sequence[Sequence[Any]], results: Sequence[str]) -> None:
        now = utcnow()
        sent = [r[_ID] for r, res in zip(rows, results, strict=True) if res == OK]
        unroutable = [r for r, res in zip(rows, results, strict=True) if res == UNROUTABLE]
        failed = [(r, res) for r, res in zip(rows, results, strict=True) if res not in (OK, UNROUTABLE)]
        postgres = is_postgres(conn)
        if sent and postgres:
            driver_execute(conn, _PG_MARK, {"now": now, "error": None, "ids": sent})
        elif sent:
            conn.execute(update(outbox_table).where(outbox_table.c.id.in_(sent)).values(sent_at=now))
        if unroutable:
            # Nothing is bound to this type: republishing cannot help. Reported by log and metric, kept as sent.
            ids = [r[_ID] for r in unroutable]
            if postgres:
                driver_execute(conn, _PG_MARK, {"now": now, "error": _UNROUTABLE, "ids": ids})
            else:
                conn.execute(
                    update(outbox_table).where(outbox_table.c.id.in_(ids)).values(sent_at=now, last_error=_UNROUTABLE)
                )
        for row, error in failed:
            conn.execute(
                update(outbox_table)
                .where(outbox_table.c.id == row[_ID])
                .values(attempts=outbox_table.c.attempts + 1, last_error=error[:500])
            )
        counts: dict[tuple[str, str], int] = {}
        for row, res in zip(rows, results, strict=True):
            if res in (OK, UNROUTABLE):
                counts[(res, row[_TYPE])] = counts.get((res, row[_TYPE]), 0) + 1
        for (res, event_type), count in counts.items():
            metric = telemetry.EVENTS_PUBLISHED if res == OK else telemetry.EVENTS_UNROUTABLE
            metric.labels(self.service, event_type).inc(count)
        self.published += len(sent) + len(unroutable)
        self._marked_since_vacuum += len(sent) + len(unroutable)
        if failed:
            log.warning("events not confirmed, will retry", extra={"service": self.service, "count": len(failed)})

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + 5.0
            self.update_backlog_metrics()
        if now >= self._next_prune:
            self._next_prune = now + self.settings.prune_interval_seconds
            self.prune()
        s = self.settings
        if (
            s.outbox_vacuum_rows
            and self._marked_since_vacuum >= s.outbox_vacuum_rows
            and now - self._last_vacuum >= s.outbox_vacuum_min_seconds
        ):
            self.vacuum()

    def vacuum(self) -> None:
        """PostgreSQL: reclaim the row versions and index entries that marking rows sent left behind."""
        self._marked_since_vacuum, self._last_vacuum = 0, time.monotonic()
        if self.database.is_sqlite:
            return
        with self.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM {outbox_table.name}")
        self.vacuums += 1

    def update_backlog_metrics(self) -> tuple[int, float]:
        """Set the backlog gauges; returns (unsent rows, age in seconds of the oldest)."""
        with self.database.engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(outbox_table.c.occurred_at)).where(outbox_table.c.sent_at.is_(None))
            ).one()
        age = 0.0 if oldest is None else max(0.0, (utcnow() - as_utc(oldest)).total_seconds())
        telemetry.OUTBOX_BACKLOG.labels(self.service).set(count)
        telemetry.OUTBOX_OLDEST_AGE.labels(self.service).set(age)
        return int(count), age

    def prune(self) -> int:
        """Delete rows sent longer ago than the retention period, in batches; returns how many. Unsent rows stay."""
        cutoff = utcnow() - timedelta(hours=self.settings.outbox_retention_hours)
        deleted = delete_before(
            self.database,
            outbox_table.c.sent_at,
            cutoff,
            batch_size=self.settings.prune_batch_size,
            stopping=self._stopping.is_set,
        )
        record_pruned(self.service, outbox_table.name, deleted)
        return deleted


def _envelopes(rows: Sequence[Sequence[Any]]) -> list[Envelope]:
    parsed: dict[str, dict[str, str]] = {}  # headers text -> headers: the events of a unit of work share them
    envelopes = []
    for _, event_id, event_type, source, subject, store_id, payload, headers, occurred_at in rows:
        if type(headers) is str:
            headers = parsed.get(headers) or parsed.setdefault(headers, json.loads(headers) or {})
        envelopes.append(
            Envelope(
                event_id,
                event_type,
                source,
                payload if type(payload) is bytes else bytes(payload),
                as_utc(occurred_at),
                subject or "",
                store_id or "",
                headers if type(headers) is dict else dict(headers or {}),
            )
        )
    return envelopes
