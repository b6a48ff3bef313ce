"""The backbone on a real RabbitMQ with PostgreSQL outboxes and inboxes: nothing lost, every effect exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pika
import pytest
from messaging_kit import FAST, Broker, Recorder, ServiceDb, delete_queues, recorder, sale, unique_name
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_cli import events as events_cli
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.messaging import AmqpConsumer, AmqpPublisher, InboxApplier, MessagingSettings, OutboxRelay
from storeplane_runtime.messaging.envelope import EXCHANGE, Envelope
from storeplane_runtime.messaging.topology import QueueNames
from storeplane_runtime.tables import inbox_table, outbox_table
from storeplane_runtime.testing import wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]
SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name


@contextmanager
def running(
    url: str, rec: Recorder, consumer_db: ServiceDb, settings: MessagingSettings = FAST
) -> Iterator[AmqpConsumer]:
    consumer = AmqpConsumer(url, InboxApplier(consumer_db.database, rec.consumers), settings=settings)
    consumer.start()
    try:
        assert consumer.ready.wait(15), "consumer did not connect"
        yield consumer
    finally:
        consumer.stop()
        delete_queues(url, QueueNames(rec.consumers.name, settings.events_retry_delays).all())


def relay_for(url: str, db: ServiceDb, settings: MessagingSettings = FAST) -> OutboxRelay:
    return OutboxRelay(db.database, AmqpPublisher(url, app_id="checkout"), service="checkout", settings=settings)


def unsent(db: ServiceDb) -> int:
    with db.database.engine.connect() as conn:
        query = select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        return int(conn.execute(query).scalar_one())


def test_both_cloudevents_sdk_bindings_read_attributes_and_body_and_the_trace_reaches_the_handler(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    from cloudevents.core.bindings import amqp as ce_amqp
    from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
    from cloudevents.core.formats.json import JSONFormat

    checkout, stock = make_db(make_postgres_url()), make_db(make_postgres_url())
    rec = recorder(unique_name())
    sibling_queue = f"erp-{unique_name()}"
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(sibling_queue, exclusive=True)
    channel.queue_bind(sibling_queue, EXCHANGE, routing_key="pos.checkout.#")
    tracer = TracerProvider().get_tracer("test")
    relay = relay_for(rabbitmq, checkout)
    with running(rabbitmq, rec, stock):
        relay.start()
        try:
            with tracer.start_as_current_span("CompleteSale") as span:
                trace_id = f"{span.get_span_context().trace_id:032x}"
                with UnitOfWork(checkout.database, source="checkout") as uow:
                    event_id = uow.publish(sale("S-ce"), subject="S-ce")
                    uow.commit()
            wait_until(lambda: stock.effects() == (1, 1), 10, "handler")
        finally:
            relay.stop()
    method, properties, body = None, None, None
    deadline = time.monotonic() + 5
    while method is None and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(sibling_queue, auto_ack=True)
    connection.close()
    assert method is not None and properties is not None and body is not None
    assert properties.message_id == event_id
    assert properties.type == SALE
    assert properties.content_type == "application/protobuf"
    assert properties.delivery_mode == 2
    assert properties.app_id == "checkout"
    assert properties.timestamp and abs(properties.timestamp - time.time()) < 60
    message = ce_amqp.AMQPMessage(
        properties={"content-type": properties.content_type},
        application_properties=dict(properties.headers or {}),
        application_data=body,
    )
    event = ce_amqp.from_binary(message, JSONFormat())
    assert event.get_id() == event_id
    assert event.get_type() == SALE
    assert event.get_source() == "/storeplane/checkout"
    assert event.get_specversion() == "1.0"
    assert event.get_subject() == "S-ce"
    assert abs((event.get_time() - datetime.now(UTC)).total_seconds()) < 60
    data = event.get_data()
    assert isinstance(data, bytes)
    assert checkout_events.SaleCompleted.FromString(data).sale_id == "S-ce"
    assert (properties.headers or {})["traceparent"].split("-")[1] == trace_id
    assert rec.traceparents == [trace_id]

    # A sibling on pika or aio-pika with the SDK's RabbitMQ binding reads the same message alike; both bindings
    # give exactly the attributes and body of the outbox row.
    by_rabbitmq = ce_rabbitmq.from_binary(
        ce_rabbitmq.RabbitMQMessage(
            headers=dict(properties.headers or {}), content_type=properties.content_type, body=body
        ),
        JSONFormat(),
    )
    with checkout.database.engine.connect() as conn:
        row = conn.execute(
            select(outbox_table.c.occurred_at, outbox_table.c.payload).where(outbox_table.c.event_id == event_id)
        ).one()
    for read in (event, by_rabbitmq):
        assert read.get_id() == event_id
        assert read.get_type() == SALE
        assert read.get_source() == "/storeplane/checkout"
        assert read.get_specversion() == "1.0"
        assert read.get_subject() == "S-ce"
        assert read.get_time() == row.occurred_at
        assert read.get_datacontenttype() == "application/protobuf"
        assert read.get_data() == bytes(row.payload) == body


def test_events_a_sibling_publishes_with_either_sdk_binding_or_bare_cloudevents_headers_are_consumed(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    from cloudevents.core.bindings import amqp as ce_amqp
    from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    stock = make_db(make_postgres_url())
    rec = recorder(unique_name())
    occurred = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)

    def payload(event_id: str, sale_id: str) -> bytes:
        message = sale(sale_id)
        message.meta.event_id = event_id
        return message.SerializeToString()

    def event(event_id: str, sale_id: str) -> CloudEvent:
        attributes = {"id": event_id, "source": "/erp/sales", "type": SALE, "specversion": "1.0", "time": occurred}
        attributes["datacontenttype"] = "application/protobuf"
        return CloudEvent(attributes=attributes, data=payload(event_id, sale_id))

    # Knative's RabbitMQ broker and the SDK's RabbitMQ binding on pika: `ce-` headers and content_type, nothing else.
    by_rabbitmq = ce_rabbitmq.to_binary(event("erp-rabbitmq", "SIB-R"), JSONFormat())
    # The SDK's AMQP binding: `cloudEvents_` names, the time as an AMQP timestamp (milliseconds).
    by_amqp = ce_amqp.to_binary(event("erp-amqp", "SIB-A"), JSONFormat())
    messages = [
        (
            pika.BasicProperties(headers=dict(by_rabbitmq.headers), content_type=by_rabbitmq.content_type),
            by_rabbitmq.body,
        ),
        (
            pika.BasicProperties(
                headers=dict(by_amqp.application_properties), content_type=by_amqp.properties["content-type"]
            ),
            by_amqp.application_data,
        ),
        # Written by hand: only `cloudEvents:` headers, not even a content type.
        (
            pika.BasicProperties(
                headers={
                    "cloudEvents:specversion": "1.0",
                    "cloudEvents:id": "erp-colon",
                    "cloudEvents:source": "/erp/sales",
                    "cloudEvents:type": SALE,
                    "cloudEvents:time": "2025-03-14T09:26:53.589Z",
                }
            ),
            payload("erp-colon", "SIB-C"),
        ),
    ]
    with running(rabbitmq, rec, stock):
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for properties, body in messages:
                channel.basic_publish(EXCHANGE, SALE, body, properties, mandatory=True)
        finally:
            connection.close()
        wait_until(lambda: stock.effects() == (3, 3), 15, "the sibling's three events applied")
    assert sorted(rec.seen) == ["SIB-A", "SIB-C", "SIB-R"]
    with stock.database.engine.connect() as conn:
        inbox = conn.execute(
            select(inbox_table.c.event_id, inbox_table.c.event_type).where(inbox_table.c.consumer == rec.consumers.name)
        ).all()
    # Deduplicated on the CloudEvents id, as our own events are on their message_id.
    assert sorted(inbox) == [("erp-amqp", SALE), ("erp-colon", SALE), ("erp-rabbitmq", SALE)]


def test_an_unroutable_event_is_reported_not_silently_dropped(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    checkout = make_db(make_postgres_url())
    publisher = AmqpPublisher(rabbitmq, app_id="checkout")
    try:
        envelope = Envelope(
            event_id="e-unroutable",
            event_type="pos.nobody.v1.Listens",
            source="checkout",
            payload=b"",
            occurred_at=datetime.now(UTC),
        )
        assert publisher.publish([envelope]) == ["unroutable"]
    finally:
        publisher.close()
    assert checkout  # the relay marks such rows with last_error "unroutable" (see relay._mark)


def test_ten_thousand_events_survive_a_broker_restart_mid_stream_each_applied_once(
    rabbitmq: str, broker: Broker, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    checkout, stock = make_db(make_postgres_url()), make_db(make_postgres_url())
    rec = recorder(unique_name())
    relay = relay_for(rabbitmq, checkout)
    total = 10_000
    with running(rabbitmq, rec, stock) as consumer:
        relay.start()
        try:
            producer = threading.Thread(target=lambda: _produce_slowly(checkout, total))
            producer.start()
            wait_until(lambda: stock.effects()[1] >= 2_000, 60, "first events through")
            broker.stop()  # mid-stream: the producer keeps committing to the outbox
            time.sleep(1.0)
            broker.start()
            producer.join(120)
            wait_until(lambda: stock.effects()[1] == total, 120, f"all {total} events applied")
            wait_until(lambda: unsent(checkout) == 0, 30, "outbox drained")
            assert consumer.connections_opened >= 2  # it really lost the broker and came back
        finally:
            relay.stop()
    assert stock.effects() == (total, total)


def _produce_slowly(db: ServiceDb, total: int) -> None:
    for start in range(0, total, 100):
        db.publish_sales(100, prefix=f"b{start}-")
        time.sleep(0.02)


def test_two_relays_on_one_postgres_outbox_publish_each_row_once(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    checkout = make_db(make_postgres_url())
    queue = f"count-{unique_name()}"
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(queue, exclusive=True)
    channel.queue_bind(queue, EXCHANGE, routing_key=SALE)
    small = FAST.model_copy(update={"outbox_batch_size": 50})
    relays = [relay_for(rabbitmq, checkout, small), relay_for(rabbitmq, checkout, small)]
    total = 3_000
    for relay in relays:
        relay.start()
    try:
        checkout.publish_sales(total, per_commit=50)
        wait_until(lambda: unsent(checkout) == 0, 60, "outbox drained")
    finally:
        for relay in relays:
            relay.stop()
    seen: Counter[str] = Counter()
    while True:
        method, properties, _body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        seen[properties.message_id] += 1
    connection.close()
    assert len(seen) == total
    assert max(seen.values()) == 1
    assert all(r.published > 0 for r in relays), [r.published for r in relays]


def test_a_handler_slower_than_two_heartbeats_keeps_its_connection(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    checkout, stock = make_db(make_postgres_url()), make_db(make_postgres_url())
    rec = recorder(unique_name())
    rec.sleep = 3.5
    settings = FAST.model_copy(update={"amqp_heartbeat_seconds": 1})
    relay = relay_for(rabbitmq, checkout)
    with running(rabbitmq, rec, stock, settings) as consumer:
        relay.start()
        try:
            checkout.publish_sales(1)
            wait_until(lambda: stock.effects() == (1, 1), 15, "slow handler")
            time.sleep(1.0)
            assert consumer.connections_opened == 1
            assert consumer.ready.is_set()
        finally:
            relay.stop()
    assert rec.seen == ["S0"]  # acknowledged on the same connection: never redelivered


def test_a_poison_message_is_parked_with_its_reason_while_the_rest_flows_and_replay_brings_it_back(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    checkout, stock = make_db(make_postgres_url()), make_db(make_postgres_url())
    rec = recorder(unique_name())
    rec.poison.add("P")
    relay = relay_for(rabbitmq, checkout)
    name = rec.consumers.name
    with running(rabbitmq, rec, stock):
        relay.start()
        try:
            with UnitOfWork(checkout.database, source="checkout") as uow:
                poison_id = uow.publish(sale("P"))
                uow.commit()
            checkout.publish_sales(1_000)
            wait_until(lambda: stock.effects()[1] == 1_000, 60, "the good messages")
            wait_until(lambda: len(events_cli.list_parked(rabbitmq, name)) == 1, 20, "the poison parked")
            assert rec.seen.count("P") <= FAST.events_delivery_limit + 1
            assert rec.seen.count("P") == FAST.max_attempts
            [parked] = events_cli.list_parked(rabbitmq, name)
            assert (parked.event_id, parked.event_type) == (poison_id, SALE)
            assert "ValueError: cannot apply sale P" in parked.reason
            assert parked.attempts == FAST.max_attempts
            depths = {d.queue: d.messages for d in events_cli.queue_depths(rabbitmq, [name])}
            assert depths[f"{name}.events.parked"] == 1
            rec.poison.clear()
            code = _cli(["events", "--amqp-url", rabbitmq, "replay", name])
            assert code == 0
            wait_until(lambda: stock.effects()[1] == 1_001, 20, "the replayed message applied")
            assert events_cli.list_parked(rabbitmq, name) == []
        finally:
            relay.stop()
    assert stock.effects() == (1_001, 1_001)


def _cli(argv: list[str]) -> int:
    from storeplane_cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code or 0)


RELAY_CHILD = """
import sys, time
from storeplane_runtime.db import Database
from storeplane_runtime.messaging import AmqpPublisher, MessagingSettings, OutboxRelay
db = Database(sys.argv[1])
settings = MessagingSettings(outbox_batch_size=100, outbox_poll_seconds=0.2, reconnect_max_seconds=0.5)
publisher = AmqpPublisher(sys.argv[2], app_id="checkout")
relay = OutboxRelay(db, publisher, service="checkout", settings=settings)
publisher.connect()
print("ready", flush=True)
while True:
    relay.relay_once()
"""


def test_a_relay_killed_between_publishing_and_marking_sent_causes_duplicates_but_no_double_effect(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str]
) -> None:
    checkout_url = make_postgres_url()
    checkout, stock = make_db(checkout_url), make_db(make_postgres_url())
    rec = recorder(unique_name())
    total = 2_000
    checkout.publish_sales(total, per_commit=200)
    duplicates_before = _duplicates(rec.consumers.name)
    rng = random.Random(7)
    kills = 0
    with running(rabbitmq, rec, stock):
        while unsent(checkout) > 0 and kills < 8:
            child = subprocess.Popen(
                [sys.executable, "-c", RELAY_CHILD, checkout_url, rabbitmq],
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert child.stdout is not None
            child.stdout.readline()
            time.sleep(rng.uniform(0.01, 0.25))
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            kills += 1
        leftover = unsent(checkout)
        if leftover:  # finish the rest with a relay that is not killed
            relay = relay_for(rabbitmq, checkout)
            relay.start()
            try:
                wait_until(lambda: unsent(checkout) == 0, 60, "outbox drained")
            finally:
                relay.stop()
        wait_until(lambda: stock.effects()[1] == total, 60, "every event applied")
        time.sleep(0.5)  # let late duplicates arrive
    assert kills >= 3
    assert stock.effects() == (total, total)
    # Duplicates may be delivered; they are acknowledged without effect (counted, for the report).
    print(f"kills={kills} duplicates={_duplicates(rec.consumers.name) - duplicates_before}")


def _duplicates(consumer: str) -> float:
    from storeplane_runtime import telemetry

    return telemetry.EVENTS_CONSUMED.labels(consumer, SALE, "duplicate")._value.get()


def test_unroutable_events_are_each_reported_but_logged_once_a_minute_per_type(
    rabbitmq: str, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = AmqpPublisher(rabbitmq, app_id="stock")
    try:
        envelopes = [
            Envelope(
                event_id=f"e-quiet-{i}",
                event_type="pos.nobody.v1.Listens",
                source="stock",
                payload=b"",
                occurred_at=datetime.now(UTC),
            )
            for i in range(5)
        ]
        with caplog.at_level("WARNING", logger="storeplane_runtime.messaging.amqp_publisher"):
            assert publisher.publish(envelopes[:3]) == ["unroutable"] * 3
            assert publisher.publish(envelopes[3:]) == ["unroutable"] * 2
    finally:
        publisher.close()
    assert [r.getMessage() for r in caplog.records] == ["event unroutable"]
