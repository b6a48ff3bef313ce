"""Process metrics an operator needs beside the RPC ones: the database pool (connections in use, calls waiting for
one), the broker's own depth of each of the service's queues (consumer lag), and the events parked for an operator.

The pool is read when Prometheus scrapes; the queues and parked events are sampled by `OperationsWatch`, a worker
started with the service (every OPERATIONS_INTERVAL seconds, default 15), so a scrape never waits on the broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
from prometheus_client import Gauge
from sqlalchemy.engine import Engine

from storeplane_runtime.db import Database
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.held_events import PARKED, HeldEvents
from storeplane_runtime.messaging.topology import QueueNames
from storeplane_runtime.workers import ThreadWorker

__all__ = [
    "DB_POOL_CAPACITY",
    "DB_POOL_IN_USE",
    "DB_POOL_WAITING",
    "EVENTS_PARKED_NOW",
    "QUEUE_CONSUMERS",
    "QUEUE_MESSAGES",
    "OperationsWatch",
    "pool_waiting",
    "watch_pool",
]

log = logging.getLogger(__name__)

DB_POOL_IN_USE = Gauge("storeplane_db_pool_in_use", "Database connections checked out of the pool", ["service"])
DB_POOL_WAITING = Gauge(
    "storeplane_db_pool_waiting", "Threads waiting for a database connection (the pool is exhausted)", ["service"]
)
DB_POOL_CAPACITY = Gauge(
    "storeplane_db_pool_capacity", "Connections the pool may hand out at once (size + overflow)", ["service"]
)
QUEUE_MESSAGES = Gauge(
    "storeplane_queue_messages", "Messages ready in a queue, as the broker counts them (consumer lag)", ["queue"]
)
QUEUE_CONSUMERS = Gauge(
    "storeplane_queue_consumers", "Consumers attached to a queue, as the broker counts them", ["queue"]
)
EVENTS_PARKED_NOW = Gauge(
    "storeplane_events_parked_current",
    "Events parked now and waiting for an operator (replay or purge), by consumer and where they are held",
    ["consumer", "place"],
)


def pool_waiting(engine: Engine) -> int:
    """Threads blocked in the pool's queue waiting for a connection (0 for pools that never make callers wait)."""
    queue = getattr(engine.pool, "_pool", None)
    condition = getattr(queue, "not_empty", None)
    waiters = getattr(condition, "_waiters", None)
    return len(waiters) if waiters is not None else 0


def watch_pool(service: str, engine: Engine) -> None:
    """Read the pool of `engine` at each scrape (connections in use, callers waiting, capacity)."""
    pool: Any = engine.pool
    DB_POOL_IN_USE.labels(service).set_function(lambda: float(pool.checkedout()) if hasattr(pool, "checkedout") else 0)
    DB_POOL_WAITING.labels(service).set_function(lambda: float(pool_waiting(engine)))
    size = pool.size() if hasattr(pool, "size") else 1
    overflow = getattr(pool, "_max_overflow", 0)
    DB_POOL_CAPACITY.labels(service).set(size + max(overflow, 0))


class OperationsWatch(ThreadWorker):
    """Samples the broker's depth of the service's queues and the parked events, every `interval` seconds."""

    def __init__(
        self,
        service: str,
        database: Database,
        *,
        amqp_url: str = "",
        consumes: bool = True,
        messaging: MessagingSettings | None = None,
        interval: float | None = None,
    ) -> None:
        self.thread_name = f"operations-{service}"
        self.service = service
        self.database = database
        self.amqp_url = amqp_url
        self.consumes = consumes
        settings = messaging or MessagingSettings()
        self.queues = QueueNames(service, tuple(settings.events_retry_delays))
        self.interval = interval if interval is not None else float(os.environ.get("OPERATIONS_INTERVAL", "15"))
        self._connection: pika.BlockingConnection | None = None
        super().__init__()
        watch_pool(service, database.engine)

    def sample(self) -> None:
        """One look at the parked events (the database's and, with a broker, its parking queue) and queue depths."""
        if not self.consumes:
            return
        held = HeldEvents(self.database, self.service).counts()
        EVENTS_PARKED_NOW.labels(self.service, "database").set(held.get(PARKED, 0))
        if self.amqp_url:
            depths = self._depths(self.queues.all())
            for queue, (messages, consumers) in depths.items():
                QUEUE_MESSAGES.labels(queue).set(messages)
                QUEUE_CONSUMERS.labels(queue).set(consumers)
            if self.queues.parked in depths:
                EVENTS_PARKED_NOW.labels(self.service, "broker").set(depths[self.queues.parked][0])

    def _depths(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        try:
            if self._connection is None or not self._connection.is_open:
                parameters = pika.URLParameters(self.amqp_url)
                parameters.connection_attempts = 1
                self._connection = pika.BlockingConnection(parameters)
            channel = self._connection.channel()
            for queue in queues:
                try:
                    ok = channel.queue_declare(queue, passive=True).method
                except pika.exceptions.ChannelClosedByBroker:  # not declared (yet): nothing to say about it
                    channel = self._connection.channel()
                    continue
                found[queue] = (int(ok.message_count), int(ok.consumer_count))
            channel.close()
        except pika.exceptions.AMQPError:
            log.warning("operations: the broker did not answer; queue depths not updated", exc_info=True)
            self._close()
        return found

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()

    def _run(self) -> None:
        # first look one interval after the start: by then the consumer has declared its queues
        while not self._stopping.wait(self.interval):
            try:
                self.sample()
            except Exception:
                log.warning("operations sample failed; trying again next time", exc_info=True)
        self._close()
