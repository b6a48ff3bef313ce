"""The operations metrics: the pool read at scrape time (in use, waiting), and the broker's depths of a service's
queues and its parked events sampled by OperationsWatch, against a real RabbitMQ."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
from prometheus_client import REGISTRY
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database
from storeplane_runtime.messaging.config import MessagingSettings
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.messaging.held_events import PARKED, HeldEvent, HeldEvents
from storeplane_runtime.messaging.topology import QueueNames, declare_consumer_queues
from storeplane_runtime.operations import OperationsWatch, pool_waiting, watch_pool
from storeplane_runtime.tables import messaging_metadata


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_pool_in_use_and_waiting_are_read_at_scrape_time(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'pool.db'}", poolclass=QueuePool, pool_size=1, max_overflow=0)
    watch_pool("pooltest", engine)
    assert sample("storeplane_db_pool_in_use", service="pooltest") == 0
    assert sample("storeplane_db_pool_capacity", service="pooltest") == 1
    held = engine.connect()
    assert sample("storeplane_db_pool_in_use", service="pooltest") == 1
    got = threading.Event()

    def wait_for_one() -> None:
        with engine.connect():
            got.set()

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    deadline = time.monotonic() + 5
    while pool_waiting(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sample("storeplane_db_pool_waiting", service="pooltest") == 1
    held.close()
    waiter.join(timeout=5)
    assert got.is_set()
    assert sample("storeplane_db_pool_waiting", service="pooltest") == 0
    engine.dispose()


def test_queue_depths_and_parked_events_come_from_the_broker_and_the_database(
    make_amqp_url: Callable[[], str], tmp_path: Path
) -> None:
    url = make_amqp_url()
    settings = MessagingSettings()
    names = QueueNames("opstest", tuple(settings.events_retry_delays))
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    declare_consumer_queues(channel, names, delivery_limit=settings.events_delivery_limit, event_types=["x.Y"])
    for _ in range(3):
        channel.basic_publish("", names.main, b"lagging")
    channel.basic_publish("", names.parked, b"parked")
    database = Database(f"sqlite:///{tmp_path / 'ops.db'}")
    messaging_metadata.create_all(database.engine)
    envelope = Envelope("e1", "x.Y", "elsewhere", b"", utcnow())
    HeldEvents(database, "opstest").record([HeldEvent(envelope, PARKED, "handler: boom")])

    watch = OperationsWatch("opstest", database, amqp_url=url, messaging=settings, interval=0.1)
    deadline = time.monotonic() + 10
    while sample("storeplane_queue_messages", queue=names.main) != 3 and time.monotonic() < deadline:
        watch.sample()  # quorum queues count published messages a moment later
        time.sleep(0.1)
    assert sample("storeplane_queue_messages", queue=names.main) == 3
    assert sample("storeplane_queue_consumers", queue=names.main) == 0
    assert sample("storeplane_events_parked_current", consumer="opstest", place="broker") == 1
    assert sample("storeplane_events_parked_current", consumer="opstest", place="database") == 1
    for queue in names.retries:
        assert sample("storeplane_queue_messages", queue=queue) == 0

    # as a worker: it keeps sampling until stopped
    channel.queue_purge(names.main)
    watch.start()
    deadline = time.monotonic() + 10
    while sample("storeplane_queue_messages", queue=names.main) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    watch.stop()
    assert sample("storeplane_queue_messages", queue=names.main) == 0
    connection.close()
    database.dispose()


def test_a_broker_that_does_not_answer_leaves_the_worker_running(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'ops.db'}")
    messaging_metadata.create_all(database.engine)
    watch = OperationsWatch("opsdown", database, amqp_url="amqp://guest:guest@127.0.0.1:1/", interval=0.05)
    watch.sample()  # no exception
    assert sample("storeplane_events_parked_current", consumer="opsdown", place="database") == 0
    assert sample("storeplane_queue_messages", queue="opsdown.events") is None
    database.dispose()
