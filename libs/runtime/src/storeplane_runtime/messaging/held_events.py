"""The events an in-process bus consumer holds, in its own database: waiting for a retry, or parked."""

# The embedded counterpart of RabbitMQ's durable retry and parking queues. A consumer lets the relay mark a failed
# event sent only once it is held (committed), and takes its held events up again when it starts. Operators list,
# replay and purge parked events here (`storeplane events` on an embedded stack's data directory).

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update

from storeplane_runtime.clock import as_utc, utcnow
from storeplane_runtime.db import Database
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.sql import insert_for
from storeplane_runtime.tables import held_events_table as held

WAITING = "waiting"
PARKED = "parked"


@dataclass(frozen=True)
class HeldEvent:
    """An event taken into a consumer's custody: waiting for the attempt `envelope.attempt` at `due_at`, or parked
    after its last attempt."""

    envelope: Envelope
    state: str  # WAITING or PARKED
    reason: str  # the last failure
    due_at: datetime | None = None


@dataclass(frozen=True)
class ParkedEvent:
    """A parked event as operators list it: since when it is parked, and why."""

    envelope: Envelope  # attempt: the last one made; reason: why it was parked
    reason: str
    parked_at: datetime


class HeldEvents:
    """The held events of one consumer (`consumer`) in its service's database."""

    def __init__(self, database: Database, consumer: str) -> None:
        self.database = database
        self.consumer = consumer

    def record(
        self, new: Sequence[HeldEvent] = (), changed: Sequence[HeldEvent] = (), released: Collection[str] = ()
    ) -> None:
        """In one transaction: hold the `new` events (an event held already stays as it is held), update the
        `changed` ones, and release (forget) the events `released`."""
        now = utcnow()
        with self.database.engine.begin() as conn:
            if new:
                conn.execute(insert_for(conn, held).on_conflict_do_nothing(), [self._row(h, now) for h in new])
            if changed:
                conn.execute(
                    update(held)
                    .where(held.c.consumer == bindparam("b_consumer"), held.c.event_id == bindparam("b_event_id"))
                    .values(
                        state=bindparam("state"),
                        attempt=bindparam("attempt"),
                        due_at=bindparam("due_at"),
                        reason=bindparam("reason"),
                        held_at=bindparam("held_at"),
                    ),
                    [
                        {
                            "b_consumer": self.consumer,
                            "b_event_id": h.envelope.event_id,
                            "state": h.state,
                            "attempt": h.envelope.attempt,
                            "due_at": h.due_at,
                            "reason": h.reason,
                            "held_at": now,
                        }
                        for h in changed
                    ],
                )
            if released:
                conn.execute(delete(held).where(self._mine(), held.c.event_id.in_(list(released))))

    def _row(self, event: HeldEvent, now: datetime) -> dict[str, Any]:
        e = event.envelope
        return {
            "consumer": self.consumer,
            "event_id": e.event_id,
            "event_type": e.event_type,
            "source": e.source,
            "subject": e.subject,
            "store_id": e.store_id,
            "payload": e.payload,
            "trace_headers": dict(e.trace_headers),
            "occurred_at": e.occurred_at,
            "state": event.state,
            "attempt": e.attempt,
            "due_at": event.due_at,
            "reason": event.reason,
            "held_at": now,
        }

    def _mine(self) -> Any:
        return held.c.consumer == self.consumer

    def due(self, limit: int) -> tuple[list[Envelope], datetime | None]:
        """Up to `limit` waiting events that are due, the earliest first, and when the next of the others is due."""
        now = utcnow()
        with self.database.read_engine.connect() as conn:
            rows = conn.execute(
                select(held)
                .where(self._mine(), held.c.state == WAITING)
                .order_by(held.c.due_at, held.c.event_id)
                .limit(limit + 1)
            ).all()
        due = [r for r in rows if as_utc(r.due_at) <= now][:limit]
        later = [as_utc(r.due_at) for r in rows[len(due) :]]
        return [_envelope(r) for r in due], (now if len(due) == limit else min(later, default=None))

    def held_ids(self) -> set[str]:
        with self.database.read_engine.connect() as conn:
            return set(conn.execute(select(held.c.event_id).where(self._mine())).scalars())

    def counts(self) -> dict[str, int]:
        """How many events wait for a retry and how many are parked."""
        with self.database.read_engine.connect() as conn:
            rows = conn.execute(select(held.c.state, func.count()).where(self._mine()).group_by(held.c.state)).all()
        found = {WAITING: 0, PARKED: 0}
        found.update({str(state): int(count) for state, count in rows})
        return found

    def parked(self, limit: int = 100) -> list[ParkedEvent]:
        """The parked events, longest parked first."""
        with self.database.read_engine.connect() as conn:
            rows = conn.execute(
                select(held)
                .where(self._mine(), held.c.state == PARKED)
                .order_by(held.c.held_at, held.c.event_id)
                .limit(limit)
            ).all()
        return [ParkedEvent(_envelope(r), r.reason, as_utc(r.held_at)) for r in rows]

    def replay(self, event_ids: Collection[str] = ()) -> int:
        """Make parked events (all, or those with the given ids) wait for a first attempt, due now; the consumer
        takes them up within a second, or when it next starts. Returns how many."""
        now = utcnow()
        statement = update(held).where(self._mine(), held.c.state == PARKED)
        if event_ids:
            statement = statement.where(held.c.event_id.in_(list(event_ids)))
        with self.database.engine.begin() as conn:
            result = conn.execute(statement.values(state=WAITING, attempt=1, due_at=now, reason="", held_at=now))
            return int(result.rowcount)

    def purge(self, state: str) -> int:
        """Forget every event held in `state` (WAITING or PARKED); returns how many."""
        with self.database.engine.begin() as conn:
            return int(conn.execute(delete(held).where(self._mine(), held.c.state == state)).rowcount)


def _envelope(row: Any) -> Envelope:
    return Envelope(
        event_id=row.event_id,
        event_type=row.event_type,
        source=row.source,
        payload=bytes(row.payload),
        occurred_at=as_utc(row.occurred_at),
        subject=row.subject,
        store_id=row.store_id,
        trace_headers=dict(row.trace_headers or {}),
        attempt=int(row.attempt),
        reason=row.reason if row.state == PARKED else "",
    )
