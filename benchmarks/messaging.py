"""Event backbone: relay throughput with confirms, consumer throughput with inbox dedupe, end-to-end lag.

Needs PostgreSQL (STOREPLANE_BENCH_POSTGRES, default the local `postgres` database as admin) and RabbitMQ
(STOREPLANE_BENCH_AMQP, default guest on 127.0.0.1, vhost `/`). Each scenario uses a fresh database and its own
queue names, removed afterwards. Floor: raw pika publishing without confirms on the same broker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.harness import Bench, Figure, scenario, summarise_latencies
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.messaging import (
    EXCHANGE,
    AmqpConsumer,
    AmqpPublisher,
    Consumers,
    InboxApplier,
    MessagingSettings,
    OutboxRelay,
)
from storeplane_runtime.messaging.topology import QueueNames
from storeplane_runtime.tables import messaging_metadata, outbox_table

POSTGRES = os.environ.get("STOREPLANE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("STOREPLANE_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name
SETTINGS = MessagingSettings(outbox_poll_seconds=0.5, reconnect_max_seconds=1.0)

_effects_metadata = MetaData()
_effects = Table(
    "bench_effects",
    _effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sale_id", String(64), nullable=False),
)


@contextmanager
def fresh_database() -> Iterator[Database]:
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    name = f"sp_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(make_url(POSTGRES).set(database=name).render_as_string(hide_password=False))
    messaging_metadata.create_all(db.engine)
    _effects_metadata.create_all(db.engine)
    try:
        yield db
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def channel() -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    try:
        yield connection.channel()
    finally:
        connection.close()


def _sale(n: int, prefix: str = "S") -> checkout_events.SaleCompleted:
    return checkout_events.SaleCompleted(meta=common_pb2.EventMeta(store_id="berlin-mitte"), sale_id=f"{prefix}{n}")


def fill_outbox(db: Database, count: int) -> None:
    for start in range(0, count, 500):
        with UnitOfWork(db, source="checkout") as uow:
            for n in range(start, min(count, start + 500)):
                uow.publish(_sale(n))
            uow.commit()


def unsent(db: Database) -> int:
    with db.engine.connect() as conn:
        query = select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        return int(conn.execute(query).scalar_one())


def effects(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(_effects)).scalar_one())


def wait_for(condition: Callable[[], bool], timeout: float, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(poll)


def sale_consumers(name: str, on_commit: Callable[[list[str]], None] | None = None) -> Consumers:
    class TimedUnitOfWork(UnitOfWork):
        def __init__(self, database: Database, *, source: str) -> None:
            super().__init__(database, source=source)
            self.sales: list[str] = []

        def commit(self) -> None:
            super().commit()
            if on_commit is not None:
                on_commit(self.sales)

    consumers = Consumers(name, unit_of_work=lambda db, source: TimedUnitOfWork(db, source=source))

    @consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: TimedUnitOfWork, event: checkout_events.SaleCompleted) -> None:
        uow.session.execute(_effects.insert().values(sale_id=event.sale_id))
        uow.sales.append(event.sale_id)

    return consumers


@scenario("floor_pika_publish", group="floor")
def floor_pika_publish(bench: Bench) -> list[Figure]:
    count = 5_000 if bench.quick else 30_000
    queue = f"bench.floor.{uuid.uuid4().hex[:8]}"
    body = _sale(1).SerializeToString()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/protobuf")
    with channel() as ch:
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        started = time.perf_counter()
        for _ in range(count):
            ch.basic_publish("", queue, body, properties)
        ch.queue_declare(queue, passive=True)  # a round trip: everything before it was written
        elapsed = time.perf_counter() - started
        ch.queue_delete(queue)
    return [Figure("pika_publish_no_confirm_per_s", count / elapsed, "msg/s")]


@scenario("messaging_relay_throughput", group="messaging")
def relay_throughput(bench: Bench) -> list[Figure]:
    count = 5_000 if bench.quick else 20_000
    queue = f"bench.relay.{uuid.uuid4().hex[:8]}"
    with fresh_database() as db, channel() as ch:
        ch.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(queue, EXCHANGE, routing_key=SALE)
        try:
            fill_outbox(db, count)
            relay = OutboxRelay(db, AmqpPublisher(AMQP, app_id="checkout"), service="checkout", settings=SETTINGS)
            started = time.perf_counter()
            relay.start()
            # The relay's own count, not a COUNT(*) every few ms competing for the database and the GIL.
            wait_for(lambda: relay.published >= count, 300, poll=0.005)
            elapsed = time.perf_counter() - started
            relay.stop()
            if unsent(db):
                raise AssertionError("the relay reported rows as sent that are not marked sent")
        finally:
            ch.queue_delete(queue)
    rate = count / elapsed
    return [
        Figure(
            "relay_events_per_s_postgres_confirms",
            rate,
            "events/s",
            at_least=2000,
            floor="pika_publish_no_confirm_per_s",
            ratio=bench.ratio(rate, "pika_publish_no_confirm_per_s"),
        )
    ]


@scenario("messaging_consumer_throughput", group="messaging")
def consumer_throughput(bench: Bench) -> list[Figure]:
    count = 5_000 if bench.quick else 20_000
    name = f"bench{uuid.uuid4().hex[:8]}"
    done = [0]

    def on_commit(sales: list[str]) -> None:
        done[0] += len(sales)  # only the handler thread commits

    consumers = sale_consumers(name, on_commit)
    names = QueueNames(name, SETTINGS.events_retry_delays)
    with fresh_database() as producer, fresh_database() as db:
        consumer = AmqpConsumer(AMQP, InboxApplier(db, consumers), settings=SETTINGS)
        try:
            consumer.start()  # declares and binds the queue, then is stopped while the queue fills
            consumer.ready.wait(15)
            consumer.stop()
            fill_outbox(producer, count)
            relay = OutboxRelay(producer, AmqpPublisher(AMQP, app_id="checkout"), service="checkout", settings=SETTINGS)
            relay.start()
            wait_for(lambda: unsent(producer) == 0, 300, poll=0.05)
            relay.stop()
            consumer = AmqpConsumer(AMQP, InboxApplier(db, consumers), settings=SETTINGS)
            started = time.perf_counter()
            consumer.start()
            # Counted after each commit by the consumer itself rather than by polling the table meanwhile.
            wait_for(lambda: done[0] >= count, 300, poll=0.005)
            elapsed = time.perf_counter() - started
            if effects(db) != count:
                raise AssertionError(f"expected {count} applied events, found {effects(db)}")
        finally:
            consumer.stop()
            with channel() as ch:
                for queue in names.all():
                    ch.queue_delete(queue)
    rate = count / elapsed
    return [
        Figure(
            "consumer_events_per_s_postgres_inbox",
            rate,
            "events/s",
            at_least=1500,
            floor="pika_publish_no_confirm_per_s",
            ratio=bench.ratio(rate, "pika_publish_no_confirm_per_s"),
        )
    ]


@scenario("messaging_end_to_end_lag", group="messaging")
def end_to_end_lag(bench: Bench) -> list[Figure]:
    """Like production: the producing service (its transactions and its relay thread) is one process and the
    consuming service another. Lag = the consumer's commit time minus the producer's commit time of each event,
    both read from the wall clock of this machine."""
    seconds = 5.0 if bench.quick else 20.0
    rate = 200.0
    total = int(seconds * rate)
    name = f"bench{uuid.uuid4().hex[:8]}"
    names = QueueNames(name, SETTINGS.events_retry_delays)
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    ready = context.Event()
    with fresh_database() as producer, fresh_database() as db:
        consumer = context.Process(
            target=_lag_consumer, args=(db.url, name, total, ready, results), name="bench-consumer", daemon=True
        )
        relay = context.Process(
            target=_lag_producer, args=(producer.url, total, rate, results), name="bench-producer", daemon=True
        )
        try:
            consumer.start()
            if not ready.wait(60):
                raise TimeoutError("the consumer process did not start consuming")
            relay.start()
            got = dict(results.get(timeout=seconds + 120) for _ in range(2))
        finally:
            for process in (relay, consumer):
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
            with channel() as ch:
                for queue in names.all():
                    ch.queue_delete(queue)
    committed: dict[str, float] = got["producer"]
    handled: dict[str, float] = got["consumer"]
    if len(handled) < total:
        raise TimeoutError(f"only {len(handled)} of {total} events were handled")
    warm = int(rate)  # the first second warms connections and caches
    lags = [handled[k] - committed[k] for k in list(committed)[warm:]]
    summary = summarise_latencies(lags)
    return [
        Figure("e2e_lag_p50_ms_at_200_per_s", summary["p50_ms"], "ms"),
        Figure("e2e_lag_p99_ms_at_200_per_s", summary["p99_ms"], "ms", at_most=50),
    ]


def _lag_consumer(url: str, name: str, total: int, ready: Any, results: Any) -> None:
    """The consuming service's process: records when each sale's handler transaction committed."""
    handled: dict[str, float] = {}

    def on_commit(sales: list[str]) -> None:
        now = time.time()
        for sale_id in sales:
            handled.setdefault(sale_id, now)

    db = Database(url)
    consumer = AmqpConsumer(AMQP, InboxApplier(db, sale_consumers(name, on_commit)), settings=SETTINGS)
    try:
        consumer.start()
        if consumer.ready.wait(30):
            ready.set()
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: len(handled) >= total, total / 50 + 60, poll=0.05)
    finally:
        consumer.stop()
        db.dispose()
        results.put(("consumer", dict(handled)))


def _lag_producer(url: str, total: int, rate: float, results: Any) -> None:
    """The producing service's process: a sale committed every 1/rate s, its relay thread publishing them."""
    committed: dict[str, float] = {}
    db = Database(url)
    relay = OutboxRelay(db, AmqpPublisher(AMQP, app_id="checkout"), service="checkout", settings=SETTINGS)
    try:
        relay.start()
        started = time.perf_counter()
        for n in range(total):
            pause = started + n / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            with UnitOfWork(db, source="checkout") as uow:
                uow.publish(_sale(n, "L"))
                uow.commit()
            committed[f"L{n}"] = time.time()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: relay.published >= total, 60, poll=0.05)
    finally:
        relay.stop()
        db.dispose()
        results.put(("producer", committed))
