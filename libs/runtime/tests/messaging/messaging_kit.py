"""Helpers of the messaging tests (imported by the tests; conftest.py puts this directory on sys.path)."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass, field

import pika
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.messaging import Consumers, MessagingSettings

effects_metadata = MetaData()
effects = Table(
    "effects",
    effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("sale_id", String(64), nullable=False),
)

FAST = MessagingSettings(
    events_retry_delays=(0.3, 0.6),
    events_delivery_limit=3,
    outbox_poll_seconds=0.5,
    reconnect_max_seconds=1.0,
)


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=check)


@dataclass
class Broker:
    """Stops and starts the RabbitMQ application; the fixture always leaves it running."""

    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True
        rabbitmqctl("stop_app")

    def start(self) -> None:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup", check=False)
        self.stopped = False


def delete_queues(url: str, names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


@dataclass
class ServiceDb:
    """A service's database with the messaging tables and the effects table."""

    database: Database

    def effects(self) -> tuple[int, int]:
        """(effects applied, distinct events applied)."""
        with self.database.engine.connect() as conn:
            total, distinct = conn.execute(select(func.count(), func.count(effects.c.event_id.distinct()))).one()
        return int(total), int(distinct)

    def publish_sales(self, count: int, *, per_commit: int = 100, prefix: str = "") -> list[str]:
        ids: list[str] = []
        for start in range(0, count, per_commit):
            with UnitOfWork(self.database, source="checkout") as uow:
                for n in range(start, min(count, start + per_commit)):
                    ids.append(uow.publish(sale(f"{prefix}S{n}")))
                uow.commit()
        return ids


def sale(sale_id: str, store_id: str = "berlin-mitte") -> checkout_events.SaleCompleted:
    return checkout_events.SaleCompleted(meta=common_pb2.EventMeta(store_id=store_id), sale_id=sale_id)


@dataclass
class Recorder:
    """A consumer whose SaleCompleted handler writes one effects row per application."""

    consumers: Consumers
    seen: list[str] = field(default_factory=list)  # sale ids, one per handler call (including failed ones)
    poison: set[str] = field(default_factory=set)
    traceparents: list[str] = field(default_factory=list)
    sleep: float = 0.0
    flaky: dict[str, int] = field(default_factory=dict)  # sale id -> how many more attempts fail before it works


def recorder(name: str) -> Recorder:
    from opentelemetry import trace

    rec = Recorder(Consumers(name))

    @rec.consumers.handler(checkout_events.SaleCompleted)
    def on_sale(uow: UnitOfWork, event: checkout_events.SaleCompleted) -> None:
        rec.seen.append(event.sale_id)
        ctx = trace.get_current_span().get_span_context()
        rec.traceparents.append(f"{ctx.trace_id:032x}")
        if rec.sleep:
            time.sleep(rec.sleep)
        if event.sale_id in rec.poison:
            raise ValueError(f"cannot apply sale {event.sale_id}")
        if rec.flaky.get(event.sale_id, 0) > 0:
            rec.flaky[event.sale_id] -= 1
            raise RuntimeError(f"sale {event.sale_id} not applicable yet")
        uow.session.execute(effects.insert().values(event_id=event.meta.event_id, sale_id=event.sale_id))

    return rec


def unique_name() -> str:
    return f"svc{uuid.uuid4().hex[:8]}"


# Added for the crash-loop, metrics, CLI and shared-contract suites -----------------------------------------

RABBITMQ_BASE = "amqp://guest:guest@127.0.0.1:5672"


def create_vhost() -> str:
    """A new, empty RabbitMQ vhost for guest; returns its AMQP URL (drop it with `drop_vhost`)."""
    vhost = f"sp_test_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return f"{RABBITMQ_BASE}/{vhost}"


def drop_vhost(url: str) -> None:
    rabbitmqctl("delete_vhost", url.rsplit("/", 1)[-1], check=False)


def metric(name: str, **labels: str) -> float:
    """A sample of the process's Prometheus registry (0.0 when the labelled child does not exist yet)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def unsent_rows(db: ServiceDb) -> int:
    from storeplane_runtime.tables import outbox_table

    with db.database.engine.connect() as conn:
        query = select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        return int(conn.execute(query).scalar_one())


def mark_unsent(db: ServiceDb, event_ids: list[str] | None = None) -> int:
    """Make the relay publish rows again (as after a relay crash between publishing and marking sent)."""
    from sqlalchemy import update

    from storeplane_runtime.tables import outbox_table

    statement = update(outbox_table).values(sent_at=None)
    if event_ids is not None:
        statement = statement.where(outbox_table.c.event_id.in_(event_ids))
    with db.database.engine.begin() as conn:
        return int(conn.execute(statement).rowcount)


@dataclass(frozen=True)
class Parked:
    event_id: str
    reason: str
    attempts: int


@dataclass
class Pipeline:
    """producer outbox -> relay -> bus -> consumer (inbox + effects), on RabbitMQ or on the in-process bus,
    seen through one interface so that the same test runs on both."""

    kind: str  # "rabbitmq" | "inprocess"
    producer: ServiceDb
    consumer_db: ServiceDb
    rec: Recorder
    service: str  # the relay's service label (metrics)
    settings: MessagingSettings
    url: str = ""  # AMQP URL (rabbitmq)
    bus: object = None  # InProcessBus (inprocess)
    consumer: object = None
    relay: object = None

    @property
    def name(self) -> str:
        return self.rec.consumers.name

    def start(self) -> None:
        from storeplane_runtime.messaging import (
            AmqpConsumer,
            AmqpPublisher,
            InboxApplier,
            InProcessConsumer,
            InProcessPublisher,
            OutboxRelay,
        )

        applier = InboxApplier(self.consumer_db.database, self.rec.consumers)
        publisher: object
        if self.kind == "rabbitmq":
            self.consumer = AmqpConsumer(self.url, applier, settings=self.settings)
            publisher = AmqpPublisher(self.url, app_id=self.service)
        else:
            self.consumer = InProcessConsumer(applier, bus=self.bus, settings=self.settings)  # type: ignore[arg-type]
            publisher = InProcessPublisher(self.bus)  # type: ignore[arg-type]
        self.consumer.start()  # type: ignore[attr-defined]
        if self.kind == "rabbitmq":
            assert self.consumer.ready.wait(15), "consumer did not connect"  # type: ignore[attr-defined]
        self.relay = OutboxRelay(
            self.producer.database,
            publisher,  # type: ignore[arg-type]
            service=self.service,
            settings=self.settings,
        )
        self.relay.start()  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()  # type: ignore[attr-defined]
        if self.consumer is not None:
            self.consumer.stop()  # type: ignore[attr-defined]

    def parked(self) -> list[Parked]:
        if self.kind == "rabbitmq":
            from storeplane_cli import events as events_cli

            return [Parked(p.event_id, p.reason, p.attempts) for p in events_cli.list_parked(self.url, self.name)]
        return [
            Parked(p.envelope.event_id, p.reason, p.envelope.attempt)
            for p in self.consumer.held.parked()  # type: ignore[attr-defined]
        ]

    def replay(self) -> int:
        if self.kind == "rabbitmq":
            from storeplane_cli import events as events_cli

            return events_cli.replay_parked(self.url, self.name)
        return int(self.consumer.replay_parked())  # type: ignore[attr-defined]

    def publish(self, *sale_ids: str) -> list[str]:
        """Commit one SaleCompleted per id, in one transaction; returns the event ids."""
        with UnitOfWork(self.producer.database, source="checkout") as uow:
            ids = [uow.publish(sale(s)) for s in sale_ids]
            uow.commit()
        return ids

    def duplicates(self) -> float:
        return metric(
            "storeplane_events_consumed_total",
            consumer=self.name,
            event_type=checkout_events.SaleCompleted.DESCRIPTOR.full_name,
            outcome="duplicate",
        )
