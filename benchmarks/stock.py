"""Stock scenarios: Reserve (3 lines) on PostgreSQL with 16 callers, GetItem with 16 callers, ImportStockLevels,
and the delay from a committed change to a WatchStock watcher.

The service runs as its own process (as deployed), so client and server do not share one interpreter.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures

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
            # More workers than callers only add GIL contention: 8 did more Reserves/s than 32 on a 2-core machine.
            "GRPC_WORKERS": "16",
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


def _import_stream(rows: int) -> Iterator[stock_pb2.ImportStockLevelsRequest]:
    stores = ["berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"]
    for n in range(rows):
        yield stock_pb2.ImportStockLevelsRequest(
            request_id="bench-import",
            row=stock_pb2.StockLevelRow(store_id=stores[n % 4], sku=f"B-{(n // 4) % SKUS:04d}", on_hand=n),
        )


def _bare_stream_rows_per_s(rows: int) -> float:
    """The import's floor: the same client stream into a grpcio handler that only counts the messages."""

    def count(
        requests: Iterator[stock_pb2.ImportStockLevelsRequest], _context: object
    ) -> stock_pb2.ImportStockLevelsResponse:
        return stock_pb2.ImportStockLevelsResponse(summary=stock_pb2.ImportSummary(received=sum(1 for _ in requests)))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_unary_rpc_method_handler(
        count,
        request_deserializer=stock_pb2.ImportStockLevelsRequest.FromString,
        response_serializer=stock_pb2.ImportStockLevelsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Import", {"Import": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_unary(
                "/bench.Import/Import",
                request_serializer=stock_pb2.ImportStockLevelsRequest.SerializeToString,
                response_deserializer=stock_pb2.ImportStockLevelsResponse.FromString,
            )
            started = time.perf_counter()
            call(_import_stream(rows), timeout=600)
            return rows / (time.perf_counter() - started)
    finally:
        server.stop(0)


@scenario("stock_import_levels", group="stock")
def stock_import_levels(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    rows = 20_000 if bench.quick else 100_000
    try:
        _load(service.stub, 1)
        started = time.perf_counter()
        service.stub.ImportStockLevels(_import_stream(rows), timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        service.close()
        _drop(name)
    floor = _bare_stream_rows_per_s(rows // 2)
    return [
        Figure(
            "import_stock_levels_pg_rows_per_s",
            rows / elapsed,
            "rows/s",
            at_least=20_000.0,
            floor="import_bare_stream_rows_per_s",
            ratio=rows / elapsed / floor,
            note="rows repeat keys (300 SKUs x 4 stores), every row a change with its event",
        ),
        Figure(
            "import_bare_stream_rows_per_s",
            floor,
            "rows/s",
            note="floor: the same stream into a grpcio handler that only counts (client and server in one process)",
        ),
    ]


@scenario("stock_watch_delay", group="stock")
def stock_watch_delay(bench: Bench) -> list[Figure]:
    """A change committed by another client (AdjustStock, 4 writers) until a WatchStock watcher of the store has it.

    Measured from the writer's call returning (the commit is acknowledged) to the watcher's receipt; a change the
    watcher had before the writer got its answer counts as 0."""
    name, url = _database()
    service = _Service(url)
    seen: dict[str, float] = {}
    returned: dict[str, float] = {}
    try:
        _load(service.stub, 1000)
        watch = service.stub.WatchStock(stock_pb2.WatchStockRequest(store_id=STORE), timeout=600)
        watch.initial_metadata()  # the subscription is live
        done: queue.Queue[None] = queue.Queue()

        def read() -> None:
            try:
                for message in watch:
                    seen[message.change.reference_id] = time.perf_counter()
            except grpc.RpcError:
                pass
            done.put(None)

        threading.Thread(target=read, daemon=True).start()
        with grpc.insecure_channel(f"127.0.0.1:{PORT}") as other:
            writer = stock_pb2_grpc.StockServiceStub(other)

            def adjust(i: int, n: int) -> None:
                request_id = f"watch-{i}-{n}"
                writer.AdjustStock(
                    stock_pb2.AdjustStockRequest(
                        request_id=request_id,
                        store_id=STORE,
                        sku=f"B-{(i * 31 + n) % SKUS:04d}",
                        delta=1,
                        reason=stock_pb2.ADJUSTMENT_REASON_COUNT,
                    ),
                    timeout=10,
                )
                returned[request_id] = time.perf_counter()
                time.sleep(0.01)  # a shop's pace, not a flood: this measures delivery, not throughput

            _run(4, 2.0 if bench.quick else 6.0, adjust)
            deadline = time.perf_counter() + 5
            while set(returned) - set(seen) and time.perf_counter() < deadline:
                time.sleep(0.01)
        watch.cancel()
        done.get(timeout=5)
    finally:
        service.close()
        _drop(name)
    missing = set(returned) - set(seen)
    delays = [max(0.0, seen[k] - returned[k]) for k in returned if k in seen]
    lat = summarise_latencies(delays)
    return [
        Figure("watch_delay_p99_ms", lat["p99_ms"], "ms", at_most=100.0, note=f"{len(delays)} changes"),
        Figure("watch_delay_p50_ms", lat["p50_ms"], "ms"),
        Figure("watch_changes_missed", float(len(missing)), "changes", at_most=0.0),
    ]
