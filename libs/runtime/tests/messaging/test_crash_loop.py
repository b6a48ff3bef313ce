"""Crash loops on RabbitMQ: a message whose handler kills the consumer process (SIGKILL, nothing acknowledged) is
redelivered to the next process, and again, until the quorum queue's `x-delivery-limit` dead-letters it
(at-least-once) to the parking queue; the queue behind it then flows again and nothing else is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pika
import pytest
from messaging_kit import FAST, ServiceDb, delete_queues, recorder, unique_name, unsent_rows

from pos.checkout.v1 import events_pb2 as checkout_events
from storeplane_cli import events as events_cli
from storeplane_runtime.messaging import AmqpConsumer, AmqpPublisher, InboxApplier, OutboxRelay
from storeplane_runtime.messaging.consumers import Outcome
from storeplane_runtime.messaging.envelope import Envelope
from storeplane_runtime.messaging.topology import QueueNames, declare_consumer_queues
from storeplane_runtime.testing import wait_until

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


def test_a_crash_loop_at_the_default_prefetch_parks_only_the_crashing_message(
    crash_setup: tuple[str, ServiceDb, ServiceDb, str, str], tmp_path: Path
) -> None:
    """With many messages in flight (the default prefetch 200, batches of up to 100) the first crash raises the
    delivery count of every message the process held, yet only the crashing one reaches the delivery limit: each
    connection starts with one message in flight and applies redelivered (suspect) messages one by one, so the
    later crashes expose nothing else. Every good event is applied exactly once, none is parked."""
    url, checkout, stock, stock_url, name = crash_setup
    good = [f"G{n}" for n in range(150)]
    ids = _publish_through_the_outbox(url, checkout, [*good[:75], "CRASH", *good[75:]])
    processes = CrashingConsumers(stock_url, url, name, "CRASH", tmp_path, prefetch=0)  # FAST: prefetch 200
    try:
        processes.run_until(
            lambda: stock.effects()[1] == len(good) and len(events_cli.list_parked(url, name, limit=1000)) >= 1,
            90,
            "the good events applied and the crashing one parked",
        )
        # The surviving process settles what it holds; nothing else may be parked meanwhile or after.
        wait_until(lambda: _depth(url, name) == 0, 10, "the queue drained")
        time.sleep(2)
        processes.keep_one_running()  # it did not crash on anything else
    finally:
        processes.stop()
    limit = FAST.events_delivery_limit
    assert processes.deliveries() == [ids["CRASH"]] * (limit + 1)
    assert processes.started == limit + 2
    parked = events_cli.list_parked(url, name, limit=1000)
    assert [(p.event_id, p.reason) for p in parked] == [(ids["CRASH"], "broker: delivery_limit")]
    assert stock.effects() == (len(good), len(good))  # each good event applied exactly once
    assert _depth(url, name) == 0


def _depth(url: str, name: str) -> int:
    return {d.queue: d.messages for d in events_cli.queue_depths(url, [name])}[f"{name}.events"]


def _consumers_on(url: str, name: str) -> int:
    return {d.queue: d.consumers for d in events_cli.queue_depths(url, [name])}[f"{name}.events"]


class BatchesSeen(InboxApplier):
    """Notes, per applied batch, which of its events were redelivered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[bool]] = []

    def apply(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        self.batches.append([e.redelivered for e in envelopes])
        return super().apply(envelopes)


def test_a_connection_starts_with_one_message_in_flight_and_takes_its_prefetch_after_first_deliveries(
    crash_setup: tuple[str, ServiceDb, ServiceDb, str, str],
) -> None:
    url, checkout, stock, _stock_url, name = crash_setup
    settings = FAST.model_copy(update={"events_slow_start_deliveries": 10})
    applier = BatchesSeen(stock.database, recorder(name).consumers)
    consumer = AmqpConsumer(url, applier, settings=settings)
    consumer.start()
    try:
        assert consumer.ready.wait(15)
        _publish_through_the_outbox(url, checkout, [f"A{n}" for n in range(9)])
        wait_until(lambda: stock.effects()[1] == 9, 20, "the first events applied")
        assert applier.batches == [[False]] * 9  # one at a time
        assert _consumers_on(url, name) == 1
        _publish_through_the_outbox(url, checkout, [f"B{n}" for n in range(300)])
        wait_until(lambda: stock.effects()[1] == 309, 30, "the rest applied")
        # The 10th clean delivery ended the slow start: a second consumer with the full prefetch, batches again.
        assert _consumers_on(url, name) == 2
        assert max(len(b) for b in applier.batches) > 1
    finally:
        consumer.stop()
    assert stock.effects() == (309, 309)


def test_redelivered_messages_are_applied_one_by_one_even_at_the_full_prefetch(
    crash_setup: tuple[str, ServiceDb, ServiceDb, str, str],
) -> None:
    url, checkout, stock, _stock_url, name = crash_setup
    _publish_through_the_outbox(url, checkout, [f"S{n}" for n in range(40)])
    # A consumer that dies holding 8 messages: their delivery count rises, they come back redelivered, first.
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=8)
    held: list[int] = []
    channel.basic_consume(f"{name}.events", lambda _c, m, _p, _b: held.append(m.delivery_tag), auto_ack=False)
    wait_until(lambda: connection.process_data_events(0.05) or len(held) == 8, 10, "8 messages held")
    connection.close()

    settings = FAST.model_copy(update={"events_slow_start_deliveries": 0})  # full prefetch at once
    applier = BatchesSeen(stock.database, recorder(name).consumers)
    consumer = AmqpConsumer(url, applier, settings=settings)
    consumer.start()
    try:
        wait_until(lambda: stock.effects()[1] == 40, 20, "every event applied")
    finally:
        consumer.stop()
    redelivered = [b for b in applier.batches if any(b)]
    assert redelivered == [[True]] * 8  # each alone, never batched with others
    assert sum(len(b) for b in applier.batches) == 40
    assert stock.effects() == (40, 40)
