"""Crash loops on RabbitMQ: a message whose handler kills the consumer process (SIGKILL, nothing acknowledged) is
redelivered to the next process, and again, until the quorum queue's `x-delivery-limit` dead-letters it
(at-least-once) to the parking queue; the queue behind it then flows again and nothing else is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest
from messaging_kit import (
    FAST,
    ServiceDb,
    delete_queues,
    recorder,
    unique_name,
    unsent_rows,
    wait_until,
)

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_cli import events as events_cli
from storeplane_runtime.messaging import AmqpConsumer, AmqpPublisher, InboxApplier, OutboxRelay
from storeplane_runtime.messaging.topology import QueueNames, declare_consumer_queues

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]
SALE = checkout_events.SaleCompleted.DESCRIPTOR.full_name
HERE = Path(__file__).parent

# A consumer process of service argv[3]; its handler SIGKILLs the process on the sale argv[4], after noting the
# delivery in the file argv[5] (one line per delivery that reached the handler).
CONSUMER_CHILD = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[7])
from messaging_kit import FAST, effects
from pos.checkout.v1 import events_pb2
from storeplane_runtime.db import Database
from storeplane_runtime.messaging import AmqpConsumer, Consumers, InboxApplier

database_url, amqp_url, name, crash_sale, deliveries, prefetch = sys.argv[1:7]
consumers = Consumers(name)

@consumers.handler(events_pb2.SaleCompleted)
def on_sale(uow, event):
    if event.sale_id == crash_sale:
        with open(deliveries, "a") as f:
            f.write(event.meta.event_id + "\\n")
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    uow.session.execute(effects.insert().values(event_id=event.meta.event_id, sale_id=event.sale_id))

settings = FAST
if int(prefetch):  # 0: the defaults (prefetch 200, batches of up to 100)
    settings = FAST.model_copy(update={"events_prefetch": int(prefetch), "events_batch_size": int(prefetch)})
consumer = AmqpConsumer(amqp_url, InboxApplier(Database(database_url), consumers), settings=settings)
consumer.start()
consumer.ready.wait(30)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _publish_through_the_outbox(amqp_url: str, checkout: ServiceDb, sale_ids: list[str]) -> dict[str, str]:
    """Commit the sales in order, in one transaction, and relay them; returns sale id -> event id."""
    from messaging_kit import sale

    from storeplane_runtime.db import UnitOfWork

    with UnitOfWork(checkout.database, source="checkout") as uow:
        ids = {s: uow.publish(sale(s)) for s in sale_ids}
        uow.commit()
    relay = OutboxRelay(checkout.database, AmqpPublisher(amqp_url, app_id="checkout"), service="checkout")
    try:
        while relay.relay_once():
            pass
    finally:
        relay.publisher.close()
    assert unsent_rows(checkout) == 0
    return ids


class CrashingConsumers:
    """Starts consumer processes one after the other, a new one whenever the previous one died."""

    def __init__(self, database_url: str, amqp_url: str, name: str, crash_sale: str, tmp: Path, prefetch: int) -> None:
        self.args = [database_url, amqp_url, name, crash_sale, str(tmp / "deliveries.txt"), str(prefetch), str(HERE)]
        self.deliveries_file = tmp / "deliveries.txt"
        self.deliveries_file.touch()
        self.started = 0
        self.child: subprocess.Popen[bytes] | None = None

    def deliveries(self) -> list[str]:
        return self.deliveries_file.read_text().split()

    def keep_one_running(self) -> None:
        if self.child is not None and self.child.poll() is None:
            return
        if self.child is not None:
            assert self.child.returncode == -9, f"consumer ended with {self.child.returncode}, not by its SIGKILL"
        self.child = subprocess.Popen(
            [sys.executable, "-c", CONSUMER_CHILD, *self.args], stdout=subprocess.PIPE, env={**os.environ}
        )
        self.started += 1

    def run_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            self.keep_one_running()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait(10)


@pytest.fixture
def crash_setup(
    rabbitmq: str, make_db: Callable[[str], ServiceDb], make_postgres_url: Callable[[], str], tmp_path: Path
) -> Iterator[tuple[str, ServiceDb, ServiceDb, str, str]]:
    checkout, stock_url = make_db(make_postgres_url()), make_postgres_url()
    stock = make_db(stock_url)
    name = unique_name()
    names = QueueNames(name, FAST.events_retry_delays)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq))
    try:  # the queues exist before anything is published (as they do once a service has run once)
        declare_consumer_queues(
            connection.channel(), names, delivery_limit=FAST.events_delivery_limit, event_types=[SALE]
        )
    finally:
        connection.close()
    try:
        yield rabbitmq, checkout, stock, stock_url, name
    finally:
        delete_queues(rabbitmq, names.all())


def test_a_message_that_kills_its_consumer_is_parked_after_the_delivery_limit_and_the_queue_flows_on(
    crash_setup: tuple[str, ServiceDb, ServiceDb, str, str], tmp_path: Path
) -> None:
    """With one message in flight per consumer (prefetch 1) the crash loop costs nobody else anything."""
    url, checkout, stock, stock_url, name = crash_setup
    good = [f"G{n}" for n in range(60)]
    ids = _publish_through_the_outbox(url, checkout, [*good[:30], "CRASH", *good[30:]])
    processes = CrashingConsumers(stock_url, url, name, "CRASH", tmp_path, prefetch=1)
    try:
        processes.run_until(
            lambda: stock.effects()[1] == len(good) and len(events_cli.list_parked(url, name)) == 1,
            90,
            "the good events applied and the crashing one parked",
        )
    finally:
        processes.stop()
    limit = FAST.events_delivery_limit
    # Every delivery of the crashing message killed a process; the broker stopped after limit + 1 of them.
    assert processes.deliveries() == [ids["CRASH"]] * (limit + 1)
    assert processes.started == limit + 2  # the last one is alive, consuming what came after
    [parked] = events_cli.list_parked(url, name)
    assert (parked.event_id, parked.event_type) == (ids["CRASH"], SALE)
    assert parked.reason == "broker: delivery_limit"
    assert stock.effects() == (len(good), len(good))
    depths = {d.queue: d.messages for d in events_cli.queue_depths(url, [name])}
    assert depths[f"{name}.events"] == 0

    # Once the handler is fixed the operator replays it and it is applied, once.
    rec = recorder(name)
    consumer = AmqpConsumer(url, InboxApplier(stock.database, rec.consumers), settings=FAST)
    consumer.start()
    try:
        assert consumer.ready.wait(15)
        assert events_cli.replay_parked(url, name) == 1
        wait_until(lambda: stock.effects()[1] == len(good) + 1, 20, "the replayed message applied")
    finally:
        consumer.stop()
    assert rec.seen == ["CRASH"]
    assert events_cli.list_parked(url, name) == []
    assert stock.effects() == (len(good) + 1, len(good) + 1)


def test_a_crash_loop_at_the_default_prefetch_loses_nothing(
    crash_setup: tuple[str, ServiceDb, ServiceDb, str, str], tmp_path: Path
) -> None:
    """With many messages in flight (the default prefetch 200, batches of up to 100) the crash loop ends after
    limit + 1 deliveries too, and every other message is applied or parked, never dropped; replaying the parked
    ones applies them."""
    url, checkout, stock, stock_url, name = crash_setup
    good = [f"G{n}" for n in range(150)]
    ids = _publish_through_the_outbox(url, checkout, [*good[:75], "CRASH", *good[75:]])
    processes = CrashingConsumers(stock_url, url, name, "CRASH", tmp_path, prefetch=0)

    def settled() -> bool:
        parked = {p.event_id for p in events_cli.list_parked(url, name, limit=1000)}
        return ids["CRASH"] in parked and stock.effects()[1] + len(parked - {ids["CRASH"]}) == len(good)

    try:
        processes.run_until(settled, 90, "every message applied or parked")
    finally:
        processes.stop()
    limit = FAST.events_delivery_limit
    assert processes.deliveries() == [ids["CRASH"]] * (limit + 1)
    parked_ids = [p.event_id for p in events_cli.list_parked(url, name, limit=1000)]
    applied = stock.effects()
    assert applied[0] == applied[1]  # exactly once in effect
    others_parked = set(parked_ids) - {ids["CRASH"]}
    print(f"good messages parked with the crashing one: {len(others_parked)} of {len(good)}")

    # Replay everything but the crashing message to a healthy consumer: every good sale is then applied once.
    rec = recorder(name)
    consumer = AmqpConsumer(url, InboxApplier(stock.database, rec.consumers), settings=FAST)
    consumer.start()
    try:
        assert consumer.ready.wait(15)
        assert events_cli.replay_parked(url, name, event_ids=sorted(others_parked)) == len(others_parked)
        wait_until(lambda: stock.effects()[1] == len(good), 20, "every good message applied")
    finally:
        consumer.stop()
    assert stock.effects() == (len(good), len(good))
    assert [p.event_id for p in events_cli.list_parked(url, name)] == [ids["CRASH"]]
