"""Loyalty scenarios: HoldPoints on PostgreSQL with 16 callers on different accounts, GetAccount with 16 callers, and
the earning consumer applying SaleCompleted from RabbitMQ (inbox, capture-free earning with tiers and lots).

The service runs as its own process (as deployed) for the RPC scenarios; the consumer scenario runs the service's
own handlers behind the kit's AmqpConsumer in this process, on a fresh PostgreSQL database migrated to head.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

import grpc
from sqlalchemy import func, select, text

from benchmarks.harness import Bench, Figure, scenario, summarise_latencies
from benchmarks.messaging import AMQP, SETTINGS, channel, fresh_database, unsent, wait_for
from benchmarks.stack import _stop, _wait_serving, auth_environment, bearer, bench_issuer
from benchmarks.stock import _database, _drop, _run
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from storeplane_runtime.clock import utcnow
from storeplane_runtime.db import Database, UnitOfWork
from storeplane_runtime.messaging import AmqpConsumer, AmqpPublisher, InboxApplier, OutboxRelay
from storeplane_runtime.messaging.topology import QueueNames
from storeplane_runtime.tables import inbox_table

PORT = 57170
STORE = "berlin-mitte"
CALLERS = 16


class _Service:
    """The loyalty process on its own PostgreSQL database, trusting keys of its own."""

    def __init__(self, database_url: str, **settings: str) -> None:
        self.keys = tempfile.mkdtemp(prefix="sp-bench-auth-")
        issuer = bench_issuer(self.keys)
        token = issuer.mint(subject="bench", ttl_seconds=6 * 3600)
        env = {
            **os.environ,
            "GRPC_PORT": str(PORT),
            "GRPC_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "WARNING",
            "GRPC_WORKERS": os.environ.get("BENCH_GRPC_WORKERS", "16"),
            **auth_environment(issuer),
            **settings,
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "loyalty"], env=env, stdout=subprocess.DEVNULL)
        _wait_serving([f"127.0.0.1:{PORT}"])
        # The token travels as plain metadata per call, as a till sends it: no client interceptor in the measurement.
        self.channel = grpc.insecure_channel(f"127.0.0.1:{PORT}")
        self.stub = loyalty_pb2_grpc.LoyaltyServiceStub(self.channel)
        self.auth = bearer(token)

    def close(self) -> None:
        self.channel.close()
        _stop(self.proc)
        shutil.rmtree(self.keys, ignore_errors=True)


def _customer(i: int) -> str:
    return f"bench-customer-{i:03d}"


def _seed(service: _Service, customers: int, points: int) -> None:
    """Accounts with points, through the API (a goodwill adjustment opens nothing: each customer holds a basket of
    0 first, which opens the account)."""
    for i in range(customers):
        service.stub.HoldPoints(
            loyalty_pb2.HoldPointsRequest(
                hold_id=f"seed-{i}", customer_id=_customer(i), points=0, store_id=STORE, request_id=str(uuid.uuid4())
            ),
            timeout=30,
            metadata=service.auth,
        )
        service.stub.AdjustPoints(
            loyalty_pb2.AdjustPointsRequest(
                customer_id=_customer(i),
                points=points,
                reason=loyalty_pb2.ADJUSTMENT_REASON_MIGRATION,
                request_id=str(uuid.uuid4()),
            ),
            timeout=30,
            metadata=service.auth,
        )


@scenario("loyalty_hold_points", group="loyalty")
def loyalty_hold_points(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    seconds = 2.0 if bench.quick else 8.0
    try:
        _seed(service, CALLERS, 100_000_000)

        def hold(i: int, n: int) -> None:  # a basket's first hold, on the caller's own account
            service.stub.HoldPoints(
                loyalty_pb2.HoldPointsRequest(
                    hold_id=f"basket-{i}-{n}-{uuid.uuid4().hex[:6]}",
                    customer_id=_customer(i),
                    points=100 + n % 50,
                    store_id=STORE,
                    request_id=str(uuid.uuid4()),
                ),
                timeout=10,
                metadata=service.auth,
            )

        _run(CALLERS, 1.0, hold)  # warm up
        rate, samples = _run(CALLERS, seconds, hold)
    finally:
        service.close()
        _drop(name)
    lat = summarise_latencies(samples)
    return [
        Figure(
            "hold_points_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=1000.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
            note="a new hold per call, 16 callers on 16 accounts (account row locked, hold written, answer with the "
            "account's spend and expiring points)",
        ),
        Figure("hold_points_pg_p99_ms_16", lat["p99_ms"], "ms", at_most=30.0),
        Figure("hold_points_pg_p50_ms_16", lat["p50_ms"], "ms"),
    ]


@scenario("loyalty_get_account", group="loyalty")
def loyalty_get_account(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    seconds = 2.0 if bench.quick else 8.0
    try:
        _seed(service, CALLERS, 10_000)

        def get(i: int, n: int) -> None:
            service.stub.GetAccount(
                loyalty_pb2.GetAccountRequest(customer_id=_customer(i)), timeout=10, metadata=service.auth
            )

        _run(CALLERS, 1.0, get)
        rate, samples = _run(CALLERS, seconds, get)
    finally:
        service.close()
        _drop(name)
    lat = summarise_latencies(samples)
    return [
        Figure(
            "get_account_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=2500.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
            note=f"by customer id, 16 callers on 16 accounts; p99 {lat['p99_ms']:.1f} ms",
        )
    ]


def _sale(n: int, customers: int) -> checkout_events.SaleCompleted:
    paid = common_pb2.Money(amount_minor=2_000 + n % 7_000, currency_code="EUR")
    sale = checkout_events.SaleCompleted(
        meta=common_pb2.EventMeta(store_id=STORE),
        sale_id=f"bench-sale-{n}",
        store_id=STORE,
        customer_id=_customer(n % customers),
        loyalty_card_number=f"bench-card-{n % customers:03d}",
        currency_code="EUR",
        amount_paid=paid,
        lines=[
            checkout_events.SaleCompleted.Line(line_id="l1", quantity=1, total_amount=paid),
            checkout_events.SaleCompleted.Line(
                line_id="l2", quantity=2, total_amount=common_pb2.Money(amount_minor=0, currency_code="EUR")
            ),
        ],
    )
    sale.completed_at.FromDatetime(datetime.now(UTC))
    return sale


@scenario("loyalty_earning_consumer", group="loyalty")
def loyalty_earning_consumer(bench: Bench) -> list[Figure]:
    from loyalty import main as loyalty_main
    from loyalty import use_cases
    from loyalty.consumers import loyalty_consumers
    from loyalty.settings import LoyaltySettings
    from storeplane_runtime.app import migrations_dir
    from storeplane_runtime.migrations import upgrade

    count = 3_000 if bench.quick else 15_000
    customers = 500
    queue_name = f"benchloyalty{uuid.uuid4().hex[:8]}"
    consumers = loyalty_consumers(LoyaltySettings().policy(), utcnow, name=queue_name)
    names = QueueNames(queue_name, SETTINGS.events_retry_delays)
    db_name, url = _database()
    db = Database(url)
    consumer: AmqpConsumer | None = None
    try:
        upgrade(db.engine, migrations_dir(loyalty_main.__file__))
        applier = InboxApplier(db, consumers)
        policy = LoyaltySettings().policy()
        for i in range(customers):  # enrolled first, as the customer service's events would have done
            with UnitOfWork(db, source="bench") as uow:
                use_cases.enrol(uow, policy, customer_id=_customer(i), card_number=f"bench-card-{i:03d}", now=utcnow())
                uow.commit()
        with fresh_database() as producer:
            consumer = AmqpConsumer(AMQP, applier, settings=SETTINGS)
            consumer.start()  # declares and binds the queue, then is stopped while the queue fills
            consumer.ready.wait(15)
            consumer.stop()
            for start in range(0, count, 500):
                with UnitOfWork(producer, source="checkout") as uow:
                    for n in range(start, min(count, start + 500)):
                        uow.publish(_sale(n, customers), store_id=STORE)
                    uow.commit()
            relay = OutboxRelay(producer, AmqpPublisher(AMQP, app_id="checkout"), service="checkout", settings=SETTINGS)
            relay.start()
            wait_for(lambda: unsent(producer) == 0, 300, poll=0.05)
            relay.stop()

        def applied() -> int:
            with db.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(inbox_table)).scalar_one())

        consumer = AmqpConsumer(AMQP, applier, settings=SETTINGS)
        started = time.perf_counter()
        consumer.start()
        wait_for(lambda: applied() >= count, 600, poll=0.05)
        elapsed = time.perf_counter() - started
        with db.engine.connect() as conn:
            earned = conn.execute(text("SELECT count(*) FROM ledger_entries WHERE kind = 'EARN'")).scalar_one()
        if earned != count:
            raise AssertionError(f"expected {count} EARN entries, found {earned}")
    finally:
        if consumer is not None:
            consumer.stop()
        with channel() as ch:
            for queue in names.all():
                ch.queue_delete(queue)
        db.dispose()
        _drop(db_name)
    rate = count / elapsed
    return [
        Figure(
            "loyalty_sale_completed_applied_per_s",
            rate,
            "events/s",
            at_least=1500,
            floor="pika_publish_no_confirm_per_s",
            ratio=bench.ratio(rate, "pika_publish_no_confirm_per_s"),
            note=f"{count} SaleCompleted over {customers} accounts from RabbitMQ: inbox, earn entry and lot, "
            "booked sale, spend, tier, PointsEarned in the outbox",
        )
    ]
