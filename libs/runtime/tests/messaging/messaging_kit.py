"""Helpers of the messaging tests (imported by the tests; conftest.py puts this directory on sys.path)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
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
        uow.session.execute(effects.insert().values(event_id=event.meta.event_id, sale_id=event.sale_id))

    return rec


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unique_name() -> str:
    return f"svc{uuid.uuid4().hex[:8]}"
