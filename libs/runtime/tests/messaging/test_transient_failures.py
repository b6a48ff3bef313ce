"""A batch of events whose transaction PostgreSQL aborts for a deadlock (two transactions locking the same rows in
different orders: a consumer's batch of sales and a Reserve, say) is run again at once and applied: no event waits
out a retry delay for a failure that was nobody's fault. A real deadlock, on a real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message
from messaging_kit import ServiceDb, unique_name
from sqlalchemy import text

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging.consumers import APPLIED, Consumers, InboxApplier, transient
from storeplane_runtime.messaging.envelope import Envelope


def _envelope(sale_id: str) -> Envelope:
    event = checkout_events.SaleCompleted(sale_id=sale_id)
    return Envelope(
        event_id=str(uuid.uuid4()),
        event_type="pos.checkout.v1.SaleCompleted",
        source="checkout",
        payload=event.SerializeToString(),
        occurred_at=datetime.now(UTC),
    )


def test_a_batch_aborted_by_a_deadlock_is_run_again_and_applied(
    make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    db = make_db(make_postgres_url())
    with db.database.engine.begin() as conn:
        conn.execute(text("CREATE TABLE shelf (id int PRIMARY KEY, n int NOT NULL)"))
        conn.execute(text("INSERT INTO shelf VALUES (1, 0), (2, 0)"))
    consumers = Consumers(unique_name())
    first_lock, other_waits = threading.Event(), threading.Event()
    attempts: list[str] = []

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        attempts.append(event.sale_id)
        conn = uow.session.connection()
        conn.execute(text("UPDATE shelf SET n = n + 1 WHERE id = 1"))
        if len(attempts) == 1:  # the first time, meet the other transaction in the opposite order
            first_lock.set()
            assert other_waits.wait(10)
        conn.execute(text("UPDATE shelf SET n = n + 1 WHERE id = 2"))

    def other_transaction() -> None:
        # Holds row 2, then asks for row 1 after the handler holds it: the handler, asking for row 2 first, has
        # waited longest when PostgreSQL checks for the deadlock, so the handler's transaction is the one aborted.
        with db.database.engine.connect() as conn, conn.begin():
            conn.execute(text("UPDATE shelf SET n = n + 10 WHERE id = 2"))
            assert first_lock.wait(10)
            threading.Timer(0.3, other_waits.set).start()  # the handler asks for row 2 now and waits...
            conn.execute(text("SELECT pg_sleep(0.6)"))  # ...so it is waiting longer than we are
            conn.execute(text("UPDATE shelf SET n = n + 10 WHERE id = 1"))

    other = threading.Thread(target=other_transaction)
    other.start()
    outcomes = InboxApplier(db.database, consumers).apply([_envelope("s-1")])
    other.join(15)
    assert [o.status for o in outcomes] == [APPLIED]
    assert len(attempts) == 2  # aborted once by the deadlock, then applied
    with db.database.engine.connect() as conn:
        assert dict(conn.execute(text("SELECT id, n FROM shelf")).all()) == {1: 11, 2: 11}


def test_only_deadlocks_and_serialization_failures_count_as_transient() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    class Wrapped(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.orig = Orig(sqlstate)

    assert transient(Wrapped("40P01")) and transient(Wrapped("40001"))
    assert not transient(Wrapped("23505")) and not transient(ValueError("boom"))
    outer = RuntimeError("handler failed")
    outer.__cause__ = Wrapped("40P01")
    assert transient(outer)


def test_before_batch_sees_the_events_about_to_be_applied_first_and_once(
    make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    """The hook runs in the batch's transaction before any handler, with the fresh events in order: not a duplicate
    of an event applied before, nor an id delivered twice in the batch."""
    db = make_db(make_postgres_url())
    consumers = Consumers(unique_name())
    seen: list[str] = []

    @consumers.before_batch
    def lock_first(uow: UnitOfWork, events: Sequence[Message]) -> None:
        seen.append("hook:" + ",".join(e.sale_id for e in events))  # type: ignore[attr-defined]

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        seen.append(event.sale_id)

    applier = InboxApplier(db.database, consumers)
    old = _envelope("s-old")
    assert [o.status for o in applier.apply([old])] == [APPLIED]
    assert seen == ["s-old"]  # an event applied alone runs no hook
    seen.clear()
    twice = _envelope("s-2")
    outcomes = applier.apply([old, _envelope("s-1"), twice, twice])
    assert [o.status for o in outcomes] == ["duplicate", APPLIED, APPLIED, "duplicate"]
    assert seen == ["hook:s-1,s-2", "s-1", "s-2"]


def test_a_failing_before_batch_hook_leaves_the_batch_to_be_applied_event_by_event(
    make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    db = make_db(make_postgres_url())
    consumers = Consumers(unique_name())
    applied: list[str] = []

    @consumers.before_batch
    def broken(uow: UnitOfWork, events: Sequence[Message]) -> None:
        raise RuntimeError("bug in the hook")

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        applied.append(event.sale_id)

    outcomes = InboxApplier(db.database, consumers).apply([_envelope("s-1"), _envelope("s-2")])
    assert [o.status for o in outcomes] == [APPLIED, APPLIED]
    assert applied == ["s-1", "s-2"]
    with pytest.raises(ValueError, match="already registered"):
        consumers.before_batch(broken)
