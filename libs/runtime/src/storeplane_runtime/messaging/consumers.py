"""Event handlers of a service and how they are applied: each in a unit of work with its inbox row."""

# Usage:
#
#     consumers = Consumers("stock")
#
#     @consumers.handler(SaleCompleted)
#     def on_sale(uow: UnitOfWork, event: SaleCompleted) -> None: ...
#
# A handler changes state through `uow.session` (and may `uow.publish` further events); it does not commit.
# The runner commits the handler's effects, the events it published and the inbox row (consumer, event id) together,
# and acknowledges the message only after that commit. An event whose inbox row exists is acknowledged without
# effect, so redeliveries and replays are harmless. Messages that arrive together are applied in one transaction,
# each in its own savepoint, so one failing handler does not undo the others.

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate, trace
from sqlalchemy import Connection, text

from storeplane_runtime import telemetry
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.logs import without_row_values
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.sql import insert_for, is_postgres
from storeplane_runtime.tables import inbox_table

log = logging.getLogger(__name__)
tracer = trace.get_tracer("storeplane.messaging")

_PG_INBOX_INSERT = text(
    f"INSERT INTO {inbox_table.name} (consumer, event_id, event_type, processed_at) "
    "SELECT :consumer, e.event_id, e.event_type, :now "
    "FROM unnest(CAST(:ids AS varchar[]), CAST(:types AS varchar[])) AS e(event_id, event_type) "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)

E = TypeVar("E", bound=Message)
Handler = Callable[[Any, Any], None]


@dataclass(frozen=True)
class HandlerRegistration(Generic[E]):
    event_class: type[E]
    handle: Handler


class Consumers:
    """The event handlers of one consuming service (its consumer name and queue prefix is `name`)."""

    def __init__(self, name: str, *, unit_of_work: Callable[[Database, str], UnitOfWork] | None = None) -> None:
        self.name = name
        self.unit_of_work: Callable[[Database, str], UnitOfWork] = unit_of_work or (
            lambda db, source: UnitOfWork(db, source=source)
        )
        self.registrations: dict[str, HandlerRegistration[Any]] = {}
        self.batch_hook: Callable[[Any, Sequence[Message]], None] | None = None

    def handler(self, event_class: type[E]) -> Callable[[Callable[[Any, E], None]], Callable[[Any, E], None]]:
        """Register `fn(uow, event)` for events of `event_class` (one handler per event type)."""

        def register(fn: Callable[[Any, E], None]) -> Callable[[Any, E], None]:
            event_type = event_class.DESCRIPTOR.full_name
            if event_type in self.registrations:
                raise ValueError(f"{self.name}: a handler for {event_type} is already registered")
            self.registrations[event_type] = HandlerRegistration(event_class, fn)
            return fn

        return register

    def before_batch(self, fn: Callable[[Any, Sequence[Message]], None]) -> Callable[[Any, Sequence[Message]], None]:
        """Register `fn(uow, events)`, run in a batch's unit of work before its handlers with the events about to be
        applied, in order: where a service takes the locks the whole batch needs, in the one order its other
        writers use, so that a batch of many events cannot deadlock with them (each handler's own locks are then
        held already). Not run for an event applied alone (its handler's locks are in that order anyway)."""
        if self.batch_hook is not None:
            raise ValueError(f"{self.name}: a before_batch hook is already registered")
        self.batch_hook = fn
        return fn

    @property
    def event_types(self) -> list[str]:
        return sorted(self.registrations)

    def __bool__(self) -> bool:
        return bool(self.registrations)


APPLIED = "applied"
DUPLICATE = "duplicate"
IGNORED = "ignored"


@dataclass(frozen=True)
class Outcome:
    """What became of one delivered event."""

    status: str  # APPLIED, DUPLICATE, IGNORED or "failed"
    reason: str = ""
    final: bool = False  # a failure that retrying cannot cure (undecodable body): park at once

    @property
    def failed(self) -> bool:
        return self.status == "failed"


# A batch that hits a deadlock or a serialization failure is run again at once, this many times, before its events
# are taken one by one (where the one that still fails waits for its retry). Two transactions that lock the same
# rows in different orders (a consumer's batch of sales and a Reserve, say) are nobody's fault: PostgreSQL aborts
# one, and running it again succeeds.
TRANSIENT_RETRIES = 3
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def transient(exc: BaseException) -> bool:
    """A database error that running the same transaction again cures (deadlock, serialization failure)."""
    while exc is not None:
        if getattr(getattr(exc, "orig", None), "sqlstate", None) in _TRANSIENT_SQLSTATES:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


class _Transient(Exception):
    """The batch's transaction was aborted by the database (deadlock): run it again."""


class _HookFailed(Exception):
    """The before_batch hook raised (not a passing deadlock): the batch is applied again event by event."""


class _HandlerFailed(Exception):
    """A handler raised in the fast path: the batch is applied again event by event."""

    def __init__(self, index: int, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.index = index
        self.outcome = outcome


class InboxApplier:
    """Applies delivered events to one service's database, exactly once in effect per (consumer, event id)."""

    def __init__(self, database: Database, consumers: Consumers) -> None:
        self.database = database
        self.consumers = consumers
        self.messaging_system = "rabbitmq"  # `messaging.system` of its `process` spans (the bus it is fed by)

    def apply(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        """Apply in one transaction. Raises when the database itself fails (then nothing was applied).

        Fast path: one multi-row inbox insert, the handlers, one commit. If a handler fails, the batch is rolled
        back and applied again with a savepoint per event, so only the failing event is left out.
        """
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                outcomes = self._apply_batch(envelopes, may_retry=attempt < TRANSIENT_RETRIES)
                break
            except _Transient:
                log.info("event batch aborted by the database, running it again", extra={"attempt": attempt + 1})
            except _HookFailed:
                outcomes = self._apply_with_savepoints(envelopes, {})
                break
            except _HandlerFailed as failure:
                # The failing event is not run again (that would be a second attempt within one delivery).
                outcomes = self._apply_with_savepoints(envelopes, {failure.index: failure.outcome})
                break
        done = utcnow()
        name = self.consumers.name
        # Metric children are looked up once per (type, outcome) of the batch, not once per event.
        counts: dict[tuple[str, str], int] = {}
        lags: dict[str, list[float]] = {}
        for envelope, outcome in zip(envelopes, outcomes, strict=True):
            key = (envelope.event_type, outcome.status)
            counts[key] = counts.get(key, 0) + 1
            if outcome.status == APPLIED:
                lags.setdefault(envelope.event_type, []).append((done - envelope.occurred_at).total_seconds())
        for (event_type, status), count in counts.items():
            telemetry.EVENTS_CONSUMED.labels(name, event_type, status).inc(count)
        for event_type, seconds in lags.items():
            histogram = telemetry.EVENT_LAG.labels(name, event_type)
            for lag in seconds:
                histogram.observe(max(0.0, lag))
        return outcomes

    def _apply_with_savepoints(self, envelopes: Sequence[Envelope], known: dict[int, Outcome]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        uow = self.consumers.unit_of_work(self.database, self.consumers.name)
        with uow:
            for i, envelope in enumerate(envelopes):
                outcomes.append(known[i] if i in known else self._apply_one(uow, envelope))
            if any(o.status == APPLIED for o in outcomes):
                uow.commit()
        return outcomes

    def _apply_batch(self, envelopes: Sequence[Envelope], *, may_retry: bool = False) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(envelopes)
        events: dict[int, Message] = {}
        for i, envelope in enumerate(envelopes):
            registration = self.consumers.registrations.get(envelope.event_type)
            if registration is None:
                outcomes[i] = Outcome(IGNORED)
                continue
            try:
                events[i] = registration.event_class.FromString(envelope.payload)
            except DecodeError as exc:
                outcomes[i] = Outcome("failed", f"undecodable {envelope.event_type}: {exc}", final=True)
        uow = self.consumers.unit_of_work(self.database, self.consumers.name)
        with uow:
            fresh = self._record_many(uow.session.connection(), [envelopes[i] for i in events])
            hook = self.consumers.batch_hook
            if hook is not None and len(events) > 1:
                applying, seen = [], set()
                for i, event in events.items():
                    if envelopes[i].event_id in fresh and envelopes[i].event_id not in seen:
                        seen.add(envelopes[i].event_id)
                        applying.append(event)
                try:
                    hook(uow, applying)
                except Exception as exc:
                    if may_retry and transient(exc):
                        raise _Transient() from exc
                    log.warning("before_batch hook failed: applying the batch event by event", exc_info=True)
                    raise _HookFailed() from exc
            first_seen: set[str] = set()
            for i, event in events.items():
                envelope = envelopes[i]
                if envelope.event_id not in fresh or envelope.event_id in first_seen:
                    outcomes[i] = Outcome(DUPLICATE)
                    continue
                first_seen.add(envelope.event_id)
                try:
                    self._handle(uow, envelope, event)
                except Exception as exc:
                    if may_retry and transient(exc):
                        raise _Transient() from exc
                    raise _HandlerFailed(i, self._failed(envelope, exc)) from exc
                outcomes[i] = Outcome(APPLIED)
            if first_seen:
                uow.commit()
        return [o if o is not None else Outcome(IGNORED) for o in outcomes]

    def _handle(self, uow: UnitOfWork, envelope: Envelope, event: Message) -> None:
        registration = self.consumers.registrations[envelope.event_type]
        # The span `process pos.events` (messaging semantic conventions) is a child of the context the message
        # carries (the relay's publish span, or the producing call) and, when spans are exported, linked to it too.
        parent = propagate.extract(envelope.trace_headers)
        links: tuple[trace.Link, ...] = ()
        if telemetry.tracing_exported():
            producer = trace.get_current_span(parent).get_span_context()
            if producer.is_valid:
                links = (trace.Link(producer),)
        with tracer.start_as_current_span(
            f"process {telemetry.DESTINATION}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": self.messaging_system,
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": telemetry.DESTINATION,
                "messaging.rabbitmq.destination.routing_key": envelope.event_type,
                "messaging.message.id": envelope.event_id,
                "messaging.consumer.group.name": self.consumers.name,
            },
        ):
            registration.handle(uow, event)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "event handled",
                    extra={
                        "consumer": self.consumers.name,
                        "event_type": envelope.event_type,
                        "event_id": envelope.event_id,
                        "attempt": envelope.attempt,
                    },
                )

    def _record_many(self, conn: Connection, envelopes: Sequence[Envelope]) -> set[str]:
        """Insert the inbox rows; returns the event ids that were not there before."""
        if not envelopes:
            return set()
        now = utcnow()
        if is_postgres(conn):
            # One constant statement with array parameters: no per-batch SQL compilation, and the server keeps
            # it prepared. An id delivered twice in one batch is inserted once (the rest are duplicates).
            ids = list(dict.fromkeys(e.event_id for e in envelopes))
            types = {e.event_id: e.event_type for e in envelopes}
            result = conn.execute(
                _PG_INBOX_INSERT,
                {"consumer": self.consumers.name, "ids": ids, "types": [types[i] for i in ids], "now": now},
            )
            return set(result.scalars())
        rows = {
            e.event_id: {
                "consumer": self.consumers.name,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "processed_at": now,
            }
            for e in envelopes
        }
        statement = (
            insert_for(conn, inbox_table)
            .values(list(rows.values()))
            .on_conflict_do_nothing()
            .returning(inbox_table.c.event_id)
        )
        return set(conn.execute(statement).scalars())

    def _apply_one(self, uow: UnitOfWork, envelope: Envelope) -> Outcome:
        registration = self.consumers.registrations.get(envelope.event_type)
        if registration is None:
            return Outcome(IGNORED)
        try:
            event = registration.event_class.FromString(envelope.payload)
        except DecodeError as exc:
            return Outcome("failed", f"undecodable {envelope.event_type}: {exc}", final=True)
        session = uow.session
        savepoint = session.begin_nested()
        pending_mark = len(uow._pending)
        if not self._record(session.connection(), envelope):
            savepoint.rollback()
            return Outcome(DUPLICATE)
        try:
            self._handle(uow, envelope, event)
            savepoint.commit()
            return Outcome(APPLIED)
        except Exception as exc:
            savepoint.rollback()
            del uow._pending[pending_mark:]
            return self._failed(envelope, exc)

    def _failed(self, envelope: Envelope, exc: Exception) -> Outcome:
        error = without_row_values(f"{type(exc).__name__}: {exc}")  # kept with a held event: no row values
        log.warning(
            "event handler failed",
            extra={
                "consumer": self.consumers.name,
                "event_type": envelope.event_type,
                "event_id": envelope.event_id,
                "attempt": envelope.attempt,
                "error": error,
            },
        )
        return Outcome("failed", error[:1000])

    def _record(self, conn: Connection, envelope: Envelope) -> bool:
        """Insert the inbox row; False when it was there already (the event was applied before)."""
        values = {
            "consumer": self.consumers.name,
            "event_id": envelope.event_id,
            "event_type": envelope.event_type,
            "processed_at": utcnow(),
        }
        # RETURNING, not rowcount: the driver's rowcount of ON CONFLICT DO NOTHING is not reliable on PostgreSQL.
        statement = (
            insert_for(conn, inbox_table).values(**values).on_conflict_do_nothing().returning(inbox_table.c.event_id)
        )
        return conn.execute(statement).first() is not None

    def apply_until_done(self, envelopes: Sequence[Envelope], stopping: Callable[[], bool]) -> list[Outcome] | None:
        """`apply`, retried with backoff while the database is unreachable; None if asked to stop meanwhile."""
        delay = 0.2
        while True:
            try:
                return self.apply(envelopes)
            except Exception:
                log.warning("consumer cannot reach its database, retrying", exc_info=True)
                if stopping():
                    return None
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


def record_parked(consumer: str, envelope: Envelope, reason: str) -> None:
    """Count and log an event that was parked (the same on RabbitMQ and on the in-process bus)."""
    telemetry.EVENTS_PARKED.labels(consumer, envelope.event_type).inc()
    log.error(
        "event parked",
        extra={
            "consumer": consumer,
            "event_type": envelope.event_type,
            "event_id": envelope.event_id,
            "attempts": envelope.attempt,
            "reason": reason,
        },
    )
