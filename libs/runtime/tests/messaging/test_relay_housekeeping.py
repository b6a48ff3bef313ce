"""The relay's housekeeping and the backbone's metrics: pruning of sent outbox rows, backlog gauges, event counters
(read from prometheus_client's default registry, as /metrics serves them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from messaging_kit import FAST, Pipeline, ServiceDb, mark_unsent, metric, recorder, sale, unique_name
from sqlalchemy import insert, select

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import InboxApplier, InProcessBus, InProcessConsumer, InProcessPublisher, OutboxRelay
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.relay import coalesce_pause
from storeplane_runtime.tables import outbox_table
from storeplane_runtime.testing import wait_until

SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name


def _rows(db: ServiceDb, prefix: str, count: int, *, occurred: datetime, sent: datetime | None) -> None:
    with db.database.engine.begin() as conn:
        conn.execute(
            insert(outbox_table),
            [
                {
                    "event_id": f"{prefix}-{n}",
                    "event_type": SALE,
                    "source": "checkout",
                    "subject": "",
                    "store_id": "",
                    "payload": b"",
                    "headers": {},
                    "occurred_at": occurred,
                    "sent_at": sent,
                    "attempts": 0,
                }
                for n in range(count)
            ],
        )


def _event_ids(db: ServiceDb) -> dict[str, int]:
    with db.database.engine.connect() as conn:
        ids = conn.execute(select(outbox_table.c.event_id)).scalars()
        counts: dict[str, int] = {}
        for event_id in ids:
            prefix = event_id.rsplit("-", 1)[0]
            counts[prefix] = counts.get(prefix, 0) + 1
        return counts


def test_prune_deletes_sent_rows_past_the_retention_and_never_an_unsent_one(
    database_url: str, make_db: Callable[[str], ServiceDb]
) -> None:
    db = make_db(database_url)
    now = datetime.now(UTC)
    _rows(db, "sent-old", 12_000, occurred=now - timedelta(days=10), sent=now - timedelta(hours=2))  # > 2 chunks
    _rows(db, "sent-recent", 30, occurred=now - timedelta(days=10), sent=now - timedelta(minutes=30))
    _rows(db, "unsent-ancient", 20, occurred=now - timedelta(days=400), sent=None)
    _rows(db, "unsent-new", 10, occurred=now, sent=None)
    settings = FAST.model_copy(update={"outbox_retention_hours": 1.0})
    relay = OutboxRelay(db.database, InProcessPublisher(InProcessBus()), service="checkout", settings=settings)

    assert relay.prune() == 12_000
    assert _event_ids(db) == {"sent-recent": 30, "unsent-ancient": 20, "unsent-new": 10}
    assert relay.prune() == 0  # nothing more to do

    # Retention 0: every sent row may go, the unsent ones still stay.
    zero = OutboxRelay(
        db.database,
        InProcessPublisher(InProcessBus()),
        service="checkout",
        settings=FAST.model_copy(update={"outbox_retention_hours": 0.0}),
    )
    assert zero.prune() == 30
    assert _event_ids(db) == {"unsent-ancient": 20, "unsent-new": 10}


def test_a_running_relay_prunes_at_start_and_still_publishes_what_is_unsent(
    database_url: str, make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    db = make_db(database_url)
    consumer_db = make_db(f"sqlite:///{tmp_path}/consumer.db")
    now = datetime.now(UTC)
    _rows(db, "sent-old", 100, occurred=now - timedelta(days=5), sent=now - timedelta(days=4))
    with UnitOfWork(db.database, source="checkout") as uow:
        for n in range(5):
            uow.publish(sale(f"S{n}"))
        uow.commit()
    bus = InProcessBus()
    rec = recorder(unique_name())
    consumer = InProcessConsumer(InboxApplier(consumer_db.database, rec.consumers), bus=bus, settings=FAST)
    relay = OutboxRelay(db.database, InProcessPublisher(bus), service="checkout", settings=FAST)  # 72 h retention
    consumer.start()
    relay.start()
    try:
        wait_until(lambda: consumer_db.effects() == (5, 5), 10, "the unsent events published")
        wait_until(lambda: "sent-old" not in _event_ids(db), 10, "the old sent rows pruned")
    finally:
        relay.stop()
        consumer.stop()
    with db.database.engine.connect() as conn:
        left = conn.execute(select(outbox_table.c.sent_at)).scalars().all()
    assert len(left) == 5 and all(s is not None for s in left)  # sent just now: kept for the retention period


def test_backlog_gauges_follow_the_unsent_rows_and_drop_to_zero_once_the_relay_caught_up(
    database_url: str, make_db: Callable[[str], ServiceDb], tmp_path: object
) -> None:
    service = f"checkout-{unique_name()}"
    db = make_db(database_url)
    consumer_db = make_db(f"sqlite:///{tmp_path}/consumer.db")
    bus = InProcessBus()
    rec = recorder(unique_name())
    consumer = InProcessConsumer(InboxApplier(consumer_db.database, rec.consumers), bus=bus, settings=FAST)
    relay = OutboxRelay(db.database, InProcessPublisher(bus), service=service, settings=FAST)
    old = datetime.now(UTC) - timedelta(minutes=10)
    with UnitOfWork(db.database, source="checkout") as uow:
        for n in range(40):
            event = sale(f"S{n}")
            if n == 0:
                event.meta.occurred_at.FromDatetime(old)  # the oldest unsent row is ten minutes old
            uow.publish(event)
        uow.commit()

    count, age = relay.update_backlog_metrics()
    assert count == 40
    assert 600 <= age < 700
    assert metric("storeplane_outbox_backlog", service=service) == 40
    assert 600 <= metric("storeplane_outbox_oldest_age_seconds", service=service) < 700
    assert metric("storeplane_events_published_total", service=service, event_type=SALE) == 0

    consumer.start()
    relay.start()  # its housekeeping refreshes the gauges every 5 s
    try:
        wait_until(lambda: consumer_db.effects() == (40, 40), 10, "the backlog published")
        wait_until(lambda: metric("storeplane_outbox_backlog", service=service) == 0, 10, "backlog gauge at 0")
        assert metric("storeplane_outbox_oldest_age_seconds", service=service) == 0
    finally:
        relay.stop()
        consumer.stop()
    assert metric("storeplane_events_published_total", service=service, event_type=SALE) == 40
    assert (
        metric("storeplane_events_consumed_total", consumer=rec.consumers.name, event_type=SALE, outcome="applied")
        == 40
    )


@pytest.mark.parametrize(
    "bus", [pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.postgres]), "inprocess"]
)
def test_published_consumed_retried_and_parked_counters(bus: str, make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_pipeline(bus)
    pipeline.rec.poison.add("P")
    pipeline.rec.flaky["F"] = 1
    event_ids = pipeline.publish("P", "F", *[f"G{n}" for n in range(10)])
    wait_until(lambda: pipeline.consumer_db.effects()[1] == 11, 20, "the good and the flaky events applied")
    wait_until(lambda: len(pipeline.parked()) == 1, 20, "the poison parked")
    mark_unsent(pipeline.producer, [event_ids[2]])  # one good event published a second time
    wait_until(lambda: pipeline.duplicates() == 1, 20, "the copy seen as a duplicate")

    def consumed(outcome: str) -> float:
        return metric("storeplane_events_consumed_total", consumer=pipeline.name, event_type=SALE, outcome=outcome)

    attempts = FAST.max_attempts
    assert metric("storeplane_events_published_total", service=pipeline.service, event_type=SALE) == 13
    assert consumed("applied") == 11
    assert consumed("failed") == attempts + 1  # every attempt of the poison, one of the flaky event
    assert consumed("duplicate") == 1
    assert metric("storeplane_events_retried_total", consumer=pipeline.name, event_type=SALE) == (attempts - 1) + 1
    assert metric("storeplane_events_parked_total", consumer=pipeline.name, event_type=SALE) == 1


def test_a_busy_relay_stretches_the_pause_between_passes_to_a_multiple_of_a_pass_within_the_cap() -> None:
    settings = MessagingSettings(
        outbox_coalesce_seconds=0.005, outbox_coalesce_factor=3, outbox_coalesce_max_seconds=0.025
    )
    # Quick passes: starts at least 5 ms apart; a lone commit after a quiet spell goes at once.
    assert coalesce_pause(settings, since_last_start=0.001, last_took=0.0005) == pytest.approx(0.004)
    assert coalesce_pause(settings, since_last_start=2.0, last_took=0.0005) < 0
    # A pass that took 4 ms: the next starts 12 ms after it started; a very slow one: never more than 25 ms.
    assert coalesce_pause(settings, since_last_start=0.004, last_took=0.004) == pytest.approx(0.008)
    assert coalesce_pause(settings, since_last_start=0.2, last_took=0.2) == pytest.approx(0.025 - 0.2)
    assert coalesce_pause(settings, since_last_start=0.010, last_took=0.2) == pytest.approx(0.015)
    # Factor 0: the fixed spacing of before.
    fixed = settings.model_copy(update={"outbox_coalesce_factor": 0})
    assert coalesce_pause(fixed, since_last_start=0.004, last_took=0.004) == pytest.approx(0.001)
