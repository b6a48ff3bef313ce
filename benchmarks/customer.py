"""Customer scenarios: FindCustomer by card and RegisterCustomer on PostgreSQL with 16 callers, and ExportCustomers of
100,000 customers to one client (rate and the service's peak RSS growth).

The service runs as its own process (as deployed), so client and server do not share one interpreter. Customers for
the reads are written straight into its tables (the export's volume would take minutes through RegisterCustomer);
RegisterCustomer is measured on its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import create_engine

from benchmarks.harness import Bench, Figure, scenario, serve_bare, summarise_latencies
from benchmarks.stack import _stop, _wait_serving, auth_environment, bearer, bench_issuer
from benchmarks.stock import _database, _drop, _PeakRss, _run
from customer.domain import luhn_check_digit
from customer.storage import customers
from pos.customer.v1 import customer_pb2, customer_pb2_grpc

PORT = 57160
STORE = "berlin-mitte"


class _Service:
    """The customer process on its own PostgreSQL database, trusting keys of its own."""

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
        self.proc = subprocess.Popen([sys.executable, "-m", "customer"], env=env, stdout=subprocess.DEVNULL)
        _wait_serving([f"127.0.0.1:{PORT}"])
        # The token travels as plain metadata per call, as a till sends it: no client interceptor in the measurement.
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{PORT}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.stub = customer_pb2_grpc.CustomerServiceStub(self.channel)
        self.auth = bearer(token)

    def close(self) -> None:
        self.channel.close()
        _stop(self.proc)
        shutil.rmtree(self.keys, ignore_errors=True)


def _card(n: int) -> str:
    body = f"555{n:09d}"
    return body + luhn_check_digit(body)


def _seed(url: str, count: int) -> None:
    """`count` customers straight into the table, each with a card, an email and a distinct updated_at."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for first in range(0, count, 10_000):
                rows: list[dict[str, Any]] = []
                for n in range(first, min(count, first + 10_000)):
                    at = start + timedelta(milliseconds=n)
                    rows.append(
                        {
                            "customer_id": str(uuid.UUID(int=n + 1)),
                            "given_name": f"Given{n}",
                            "family_name": "Bench",
                            "email": f"bench{n}@example.com",
                            "phone": f"+4915{n:09d}",
                            "loyalty_card_number": _card(n),
                            "home_store_id": STORE,
                            "marketing_email": n % 2 == 0,
                            "marketing_email_at": at,
                            "marketing_sms": False,
                            "created_at": at,
                            "updated_at": at,
                            "sale_count": 0,
                            "return_count": 0,
                        }
                    )
                conn.execute(customers.insert(), rows)
    finally:
        engine.dispose()


@scenario("customer_find", group="customer")
def customer_find(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    population = 10_000
    try:
        _seed(url, population)

        def find(i: int, n: int) -> None:
            number = _card((i * 7919 + n * 104_729) % population)
            request = customer_pb2.FindCustomerRequest(loyalty_card_number=number)
            service.stub.FindCustomer(request, timeout=10, metadata=service.auth)

        _run(16, 1.0, find)  # warm up
        rate, samples = _run(16, 2.0 if bench.quick else 6.0, find)
    finally:
        service.close()
        _drop(name)
    lat = summarise_latencies(samples)
    return [
        Figure(
            "find_customer_by_card_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=2500.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
            note=f"{population} customers, a random card per call: one indexed read of the row and its spend",
        ),
        Figure("find_customer_by_card_pg_p99_ms_16", lat["p99_ms"], "ms"),
        Figure("find_customer_by_card_pg_p50_ms_16", lat["p50_ms"], "ms"),
    ]


@scenario("customer_register", group="customer")
def customer_register(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    run = uuid.uuid4().hex[:8]
    try:

        def register(i: int, n: int) -> None:
            request = customer_pb2.RegisterCustomerRequest(
                request_id=f"{run}-{i}-{n}",
                customer=customer_pb2.Customer(
                    given_name="Bench",
                    family_name=f"Caller{i}",
                    email=f"r{run}.{i}.{n}@example.com",
                    home_store_id=STORE,
                    marketing_email=customer_pb2.Consent(granted=n % 2 == 0),
                ),
            )
            service.stub.RegisterCustomer(request, timeout=10, metadata=service.auth)

        _run(16, 1.0, lambda i, n: register(i + 100, n))  # warm up
        rate, samples = _run(16, 2.0 if bench.quick else 8.0, register)
    finally:
        service.close()
        _drop(name)
    lat = summarise_latencies(samples)
    return [
        Figure(
            "register_customer_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=800.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
            note="each call: uniqueness pre-check, a new card number, the row, CustomerRegistered, its request key",
        ),
        Figure("register_customer_pg_p99_ms_16", lat["p99_ms"], "ms", at_most=40.0),
        Figure("register_customer_pg_p50_ms_16", lat["p50_ms"], "ms"),
    ]


def _sample_customer() -> customer_pb2.ExportCustomersResponse:
    """A customer as the export streams one of `_seed`'s (same fields set)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    message = customer_pb2.Customer(
        customer_id=str(uuid.UUID(int=12345)),
        given_name="Given12345",
        family_name="Bench",
        email="bench12345@example.com",
        phone="+4915000012345",
        loyalty_card_number=_card(12345),
        home_store_id=STORE,
        marketing_email=customer_pb2.Consent(granted=True),
        marketing_sms=customer_pb2.Consent(),
        stats=customer_pb2.PurchaseStats(),
    )
    for stamp in (message.marketing_email.updated_at, message.created_at, message.updated_at):
        stamp.FromDatetime(at)
    return customer_pb2.ExportCustomersResponse(customer=message)


def _serve_stream(count: int) -> None:
    """`python -m benchmarks.customer COUNT`: a bare grpcio server whose stream yields one prebuilt customer COUNT
    times; prints its port."""
    sample = _sample_customer()

    def stream(_request: customer_pb2.ExportCustomersRequest, _context: object) -> Any:
        for _ in range(count):
            yield sample

    handler = grpc.unary_stream_rpc_method_handler(
        stream,
        request_deserializer=customer_pb2.ExportCustomersRequest.FromString,
        response_serializer=customer_pb2.ExportCustomersResponse.SerializeToString,
    )
    serve_bare("bench.Export", "Export", handler)


def _bare_stream_per_s(count: int) -> float:
    """The export's floor: the same number of customer messages streamed by a grpcio handler that only yields a
    prebuilt one, in a process of its own (as the service is)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.customer", str(count)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"streaming server did not start: {port!r}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(
                "/bench.Export/Export",
                request_serializer=customer_pb2.ExportCustomersRequest.SerializeToString,
                response_deserializer=customer_pb2.ExportCustomersResponse.FromString,
            )
            started = time.perf_counter()
            received = sum(1 for _ in call(customer_pb2.ExportCustomersRequest(), timeout=600))
            elapsed = time.perf_counter() - started
        assert received == count
        return count / elapsed
    finally:
        proc.terminate()
        proc.wait(10)


def _export(service: _Service) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    for _ in service.stub.ExportCustomers(customer_pb2.ExportCustomersRequest(), timeout=600, metadata=service.auth):
        count += 1
    return count, time.perf_counter() - started


@scenario("customer_export", group="customer")
def customer_export(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    population = 20_000 if bench.quick else 100_000
    try:
        _seed(url, population)
        # Memory: an export of the first fifth (updated_since cuts it) first, then the whole; bounded memory means the
        # whole grows the process by about as much as the fifth did, not five times as much.
        fifth = customer_pb2.ExportCustomersRequest()
        fifth.updated_since.FromDatetime(datetime(2026, 1, 1) + timedelta(milliseconds=population * 4 // 5))
        with _PeakRss(service.proc.pid) as short:
            short_count = sum(1 for _ in service.stub.ExportCustomers(fifth, timeout=600, metadata=service.auth))
        with _PeakRss(service.proc.pid) as whole:
            count, seconds = _export(service)
    finally:
        service.close()
        _drop(name)
    assert count == population, f"exported {count} of {population}"
    rate = count / seconds
    floor = _bare_stream_per_s(population)
    return [
        Figure(
            "export_customers_pg_per_s",
            rate,
            "customers/s",
            at_least=30_000.0,
            floor="export_bare_stream_per_s",
            ratio=rate / floor,
            note=f"{population} customers to one client, pages of 500 (EXPORT_PAGE_SIZE)",
        ),
        Figure(
            "export_customers_peak_rss_growth_mb",
            whole.growth_mb,
            "MB",
            at_most=20.0,
            note=f"{population} customers; an export of {short_count} grew it by {short.growth_mb:.1f} MB",
        ),
        Figure(
            "export_bare_stream_per_s",
            floor,
            "msg/s",
            note="floor: as many prebuilt customer messages streamed by a bare grpcio handler in another process",
        ),
    ]


if __name__ == "__main__":
    _serve_stream(int(sys.argv[1]))
