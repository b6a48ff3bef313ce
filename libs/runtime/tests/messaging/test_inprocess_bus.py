"""The embedded bus: outbox → relay → handler in one process, each consumer in its own database with its inbox."""

from __future__ import annotations

import time
from collections.abc import Callable

from messaging_kit import FAST, ServiceDb, recorder, sale, unique_name
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select, text

from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import InboxApplier, InProcessBus, InProcessConsumer, InProcessPublisher, OutboxRelay
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.tables import outbox_table
from storeplane_runtime.testing import wait_until


def _consumer(db: ServiceDb, bus: InProcessBus, name: str | None = None):  # type: ignore[no-untyped-def]
    rec = recorder(name or unique_name())
    worker = InProcessConsumer(InboxApplier(db.database, rec.consumers), bus=bus, settings=FAST)
    return rec, worker


def _unsent(db: ServiceDb) -> int:
    with db.database.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
            ).scalar()
        )


def test_one_relay_fans_out_to_every_bound_service_each_in_its_own_database(
    make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    bus = InProcessBus()
    checkout = make_db(f"sqlite:///{tmp_path}/checkout.db")
    stock, loyalty = make_db(f"sqlite:///{tmp_path}/stock.db"), make_db(f"sqlite:///{tmp_path}/loyalty.db")
    stock_rec, stock_worker = _consumer(stock, bus, "stock")
    loyalty_rec, loyalty_worker = _consumer(loyalty, bus, "loyalty")
    relay = OutboxRelay(checkout.database, InProcessPublisher(bus), service="checkout", settings=FAST)
    for w in (stock_worker, loyalty_worker, relay):
        w.start()
    try:
        checkout.publish_sales(300, per_commit=30)
        wait_until(lambda: stock.effects()[1] == 300 and loyalty.effects()[1] == 300, 20, "both consumers")
        wait_until(lambda: _unsent(checkout) == 0, 5, "outbox marked sent")
    finally:
        for w in (relay, stock_worker, loyalty_worker):
            w.stop()
    assert stock.effects() == (300, 300)
    assert loyalty.effects() == (300, 300)


def test_events_published_before_the_consumer_starts_wait_for_it(
    make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    bus = InProcessBus()
    checkout, stock = make_db(f"sqlite:///{tmp_path}/c.db"), make_db(f"sqlite:///{tmp_path}/s.db")
    _rec, worker = _consumer(stock, bus)  # bound (queue exists) but not started
    relay = OutboxRelay(
        checkout.database, InProcessPublisher(bus, settle_timeout=0.5), service="checkout", settings=FAST
    )
    relay.start()
    try:
        checkout.publish_sales(20)
        time.sleep(1.0)
        assert stock.effects() == (0, 0)
        assert _unsent(checkout) == 20  # not settled by the consumer: not marked sent
        worker.start()
        wait_until(lambda: stock.effects()[1] == 20 and _unsent(checkout) == 0, 10, "delivery after start")
    finally:
        relay.stop()
        worker.stop()
    assert stock.effects() == (20, 20)


def test_a_redelivered_event_is_applied_once(make_db: Callable[[str], ServiceDb], tmp_path: object) -> None:
    bus = InProcessBus()
    stock = make_db(f"sqlite:///{tmp_path}/s.db")
    _rec, worker = _consumer(stock, bus)
    worker.start()
    try:
        envelope = Envelope(
            event_id="e-1",
            event_type="pos.checkout.v1.SaleCompleted",
            source="checkout",
            payload=sale("S1").SerializeToString(),
            occurred_at=__import__("datetime").datetime.now(__import__("datetime").UTC),
        )
        for _ in range(3):
            assert bus.deliver([envelope], timeout=5) == ["ok"]
    finally:
        worker.stop()
    assert stock.effects() == (1, 1)


def test_a_poison_event_is_retried_then_parked_while_the_others_flow_and_replay_brings_it_back(
    make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    bus = InProcessBus()
    checkout, stock = make_db(f"sqlite:///{tmp_path}/c.db"), make_db(f"sqlite:///{tmp_path}/s.db")
    rec, worker = _consumer(stock, bus)
    rec.poison.add("S0")
    relay = OutboxRelay(checkout.database, InProcessPublisher(bus), service="checkout", settings=FAST)
    worker.start()
    relay.start()
    try:
        checkout.publish_sales(200)
        wait_until(lambda: stock.effects()[1] == 199, 10, "good events")
        wait_until(lambda: len(worker.held.parked()) == 1, 10, "poison parked")
        parked = worker.held.parked()[0]
        assert parked.envelope.attempt == FAST.max_attempts
        assert "cannot apply sale S0" in parked.reason
        assert rec.seen.count("S0") == FAST.max_attempts
        rec.poison.clear()
        assert worker.replay_parked() == 1
        wait_until(lambda: stock.effects()[1] == 200, 10, "replayed event applied")
    finally:
        relay.stop()
        worker.stop()
    assert stock.effects() == (200, 200)


def test_the_relay_wakes_on_commit_rather_than_waiting_for_the_poll(
    make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    bus = InProcessBus()
    checkout, stock = make_db(f"sqlite:///{tmp_path}/c.db"), make_db(f"sqlite:///{tmp_path}/s.db")
    _rec, worker = _consumer(stock, bus)
    slow_poll = FAST.model_copy(update={"outbox_poll_seconds": 30.0})
    relay = OutboxRelay(checkout.database, InProcessPublisher(bus), service="checkout", settings=slow_poll)
    worker.start()
    relay.start()
    try:
        time.sleep(0.3)
        lags = []
        for n in range(10):
            started = time.monotonic()
            checkout.publish_sales(1, prefix=f"w{n}")
            wait_until(lambda n=n: stock.effects()[1] == n + 1, 5, "delivery")
            lags.append(time.monotonic() - started)
    finally:
        relay.stop()
        worker.stop()
    assert max(lags) < 1.0, lags


def test_the_trace_of_the_publishing_span_reaches_the_handler(
    make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    tracer = TracerProvider().get_tracer("test")
    bus = InProcessBus()
    checkout, stock = make_db(f"sqlite:///{tmp_path}/c.db"), make_db(f"sqlite:///{tmp_path}/s.db")
    rec, worker = _consumer(stock, bus)
    relay = OutboxRelay(checkout.database, InProcessPublisher(bus), service="checkout", settings=FAST)
    worker.start()
    relay.start()
    try:
        with tracer.start_as_current_span("CompleteSale") as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            with UnitOfWork(checkout.database, source="checkout") as uow:
                uow.publish(sale("S-traced"))
                uow.commit()
        wait_until(lambda: stock.effects()[1] == 1, 5, "delivery")
    finally:
        relay.stop()
        worker.stop()
    assert rec.traceparents == [trace_id]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_events_no_consumer_is_bound_to_are_marked_sent_as_unroutable(
    make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str], tmp_path: object
) -> None:
    for url in (f"sqlite:///{tmp_path}/lonely.db", make_postgres_url()):
        lonely = make_db(url)
        relay = OutboxRelay(lonely.database, InProcessPublisher(InProcessBus()), service="checkout", settings=FAST)
        lonely.publish_sales(30, per_commit=10)
        while relay.relay_once():
            pass
        with lonely.database.engine.connect() as conn:
            rows = conn.execute(select(outbox_table.c.sent_at, outbox_table.c.last_error)).all()
        assert len(rows) == 30, url
        assert all(r.sent_at is not None and r.last_error.startswith("unroutable") for r in rows), url
        assert relay.published == 30


def test_the_relay_vacuums_the_outbox_after_marking_enough_rows_on_postgres(
    make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    db = make_db(make_postgres_url())
    settings = FAST.model_copy(update={"outbox_vacuum_rows": 25, "outbox_vacuum_min_seconds": 0.0})
    relay = OutboxRelay(db.database, InProcessPublisher(InProcessBus()), service="checkout", settings=settings)
    db.publish_sales(20, per_commit=10)
    while relay.relay_once():
        pass
    relay._housekeeping()
    assert relay.vacuums == 0  # 20 rows marked: not yet
    db.publish_sales(10, per_commit=10)
    while relay.relay_once():
        pass
    relay._housekeeping()
    assert relay.vacuums == 1

    def vacuumed() -> bool:  # statistics reach other sessions within a second or so
        with db.database.engine.connect() as conn:
            return bool(
                conn.execute(text("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'")).scalar_one()
            )

    wait_until(vacuumed, 10, "the VACUUM in the statistics")
