"""Stock scenarios: Reserve (3 lines) on PostgreSQL with 16 callers, GetItem with 16 callers, ImportStockLevels.

The service runs as its own process (as deployed), so client and server do not share one interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.harness import Bench, Figure, scenario, summarise_latencies
from benchmarks.stack import _stop, _wait_serving
from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc

PORT = 57150
ADMIN = os.environ.get("STOREPLANE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
STORE = "berlin-mitte"
SKUS = 300


class _Service:
    def __init__(self, database_url: str) -> None:
        env = {
            **os.environ,
            "GRPC_PORT": str(PORT),
            "GRPC_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "WARNING",
            "GRPC_WORKERS": "32",
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "stock"], env=env, stdout=subprocess.DEVNULL)
        _wait_serving([f"127.0.0.1:{PORT}"])
        self.channel = grpc.insecure_channel(f"127.0.0.1:{PORT}")
        self.stub = stock_pb2_grpc.StockServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        _stop(self.proc)


def _database() -> tuple[str, str]:
    name = f"sp_bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return name, make_url(ADMIN).set(database=name).render_as_string(hide_password=False)


def _drop(name: str) -> None:
    engine = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _load(stub: stock_pb2_grpc.StockServiceStub, on_hand: int) -> None:
    stub.ImportItems(
        iter(
            stock_pb2.ImportItemsRequest(
                request_id="bench-items",
                item=stock_pb2.Item(
                    sku=f"B-{i:04d}",
                    barcodes=[f"99{i:011d}"],
                    name=f"Bench {i}",
                    tax_class="standard",
                    prices=[common_pb2.Money(amount_minor=1000 + i, currency_code="EUR")],
                ),
            )
            for i in range(SKUS)
        ),
        timeout=120,
    )
    stub.ImportStockLevels(
        iter(
            stock_pb2.ImportStockLevelsRequest(
                request_id="bench-levels",
                row=stock_pb2.StockLevelRow(store_id=STORE, sku=f"B-{i:04d}", on_hand=on_hand),
            )
            for i in range(SKUS)
        ),
        timeout=120,
    )


def _run(callers: int, seconds: float, call: object) -> tuple[float, list[float]]:
    samples: list[list[float]] = [[] for _ in range(callers)]
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            call(i, n)  # type: ignore[operator]
            samples[i].append(time.perf_counter() - started)
            n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [s for group in samples for s in group]
    return len(flat) / seconds, flat


@scenario("stock_reserve", group="stock")
def stock_reserve(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    try:
        _load(service.stub, 10**8)

        def reserve(i: int, n: int) -> None:
            skus = [f"B-{(i * 17 + n * 3 + k) % SKUS:04d}" for k in range(3)]
            service.stub.Reserve(
                stock_pb2.ReserveRequest(
                    reservation_id=f"bench-{i}-{n % 50}",
                    store_id=STORE,
                    all_or_nothing=True,
                    lines=[stock_pb2.ReservationLine(sku=s, quantity=1 + k) for k, s in enumerate(skus)],
                    request_id=str(uuid.uuid4()),
                ),
                timeout=10,
            )

        _run(16, 1.0, reserve)  # warm up
        rate, samples = _run(16, 2.0 if bench.quick else 8.0, reserve)
    finally:
        service.close()
        _drop(name)
    lat = summarise_latencies(samples)
    return [
        Figure(
            "reserve_3_lines_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=1000.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
        ),
        Figure("reserve_3_lines_pg_p99_ms_16", lat["p99_ms"], "ms", at_most=30.0),
        Figure("reserve_3_lines_pg_p50_ms_16", lat["p50_ms"], "ms"),
    ]


@scenario("stock_get_item", group="stock")
def stock_get_item(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    try:
        _load(service.stub, 10)

        def get(i: int, n: int) -> None:
            service.stub.GetItem(stock_pb2.GetItemRequest(store_id=STORE, sku=f"B-{(i + n) % SKUS:04d}"), timeout=10)

        _run(16, 1.0, get)
        rate, samples = _run(16, 2.0 if bench.quick else 6.0, get)
    finally:
        service.close()
        _drop(name)
    lat = summarise_latencies(samples)
    return [
        Figure(
            "get_item_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=2500.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
        ),
        Figure("get_item_pg_p99_ms_16", lat["p99_ms"], "ms"),
    ]


@scenario("stock_import_levels", group="stock")
def stock_import_levels(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    rows = 20_000 if bench.quick else 100_000
    try:
        _load(service.stub, 1)
        stores = ["berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"]

        def stream() -> Iterator[stock_pb2.ImportStockLevelsRequest]:
            for n in range(rows):
                yield stock_pb2.ImportStockLevelsRequest(
                    request_id="bench-import",
                    row=stock_pb2.StockLevelRow(store_id=stores[n % 4], sku=f"B-{(n // 4) % SKUS:04d}", on_hand=n),
                )

        started = time.perf_counter()
        service.stub.ImportStockLevels(stream(), timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        service.close()
        _drop(name)
    return [
        Figure(
            "import_stock_levels_pg_rows_per_s",
            rows / elapsed,
            "rows/s",
            at_least=20_000.0,
            note="rows repeat keys (300 SKUs x 4 stores), every row a change with its event",
        )
    ]
