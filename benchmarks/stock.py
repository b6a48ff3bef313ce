"""Stock scenarios: Reserve (3 lines) on PostgreSQL with 16 callers, GetItem with 16 callers, ImportStockLevels,
and the delay from a committed change to a WatchStock watcher.

The service runs as its own process (as deployed), so client and server do not share one interpreter.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from benchmarks.harness import Bench, Figure, scenario, serve_bare, summarise_latencies
from benchmarks.stack import _rss_mb, _stop, _wait_serving, auth_environment, bench_issuer
from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.auth.client import with_bearer

PORT = 57150
ADMIN = os.environ.get("STOREPLANE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
STORE = "berlin-mitte"
SKUS = 300


class _Service:
    """The stock process on its own PostgreSQL database, trusting keys of its own; `channel` calls with a token."""

    def __init__(self, database_url: str, **settings: str) -> None:
        self.keys = tempfile.mkdtemp(prefix="sp-bench-auth-")
        issuer = bench_issuer(self.keys)
        self.token = issuer.mint(subject="bench", ttl_seconds=6 * 3600)
        env = {
            **os.environ,
            "GRPC_PORT": str(PORT),
            "GRPC_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "WARNING",
            # More workers than callers only add GIL contention: 8 did more Reserves/s than 32 on a 2-core machine.
            "GRPC_WORKERS": os.environ.get("BENCH_GRPC_WORKERS", "16"),
            **auth_environment(issuer),
            **settings,
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "stock"], env=env, stdout=subprocess.DEVNULL)
        _wait_serving([f"127.0.0.1:{PORT}"])
        self.channel = self.connect()
        self.stub = stock_pb2_grpc.StockServiceStub(self.channel)
        # The measured loops send the token as plain metadata, as a till does: a Python client interceptor would
        # spend the benchmark client's CPU (on the service's two cores) on wrapping each call.
        self.bare = grpc.insecure_channel(f"127.0.0.1:{PORT}")
        self.hot = stock_pb2_grpc.StockServiceStub(self.bare)
        self.auth = (("authorization", f"Bearer {self.token}"),)

    def connect(self) -> grpc.Channel:
        """Another channel to the service whose calls carry the token (a separate connection)."""
        return with_bearer(grpc.insecure_channel(f"127.0.0.1:{PORT}"), self.token)

    def close(self) -> None:
        self.bare.close()
        self.channel.close()
        _stop(self.proc)
        shutil.rmtree(self.keys, ignore_errors=True)


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
    seconds = 2.0 if bench.quick else 8.0
    try:
        _load(service.stub, 10**8)

        def reserve(reservation_id: str, i: int, n: int) -> None:
            skus = [f"B-{(i * 17 + n * 3 + k) % SKUS:04d}" for k in range(3)]
            service.hot.Reserve(
                stock_pb2.ReserveRequest(
                    reservation_id=reservation_id,
                    store_id=STORE,
                    all_or_nothing=True,
                    lines=[stock_pb2.ReservationLine(sku=s, quantity=1 + k) for k, s in enumerate(skus)],
                    request_id=str(uuid.uuid4()),
                ),
                timeout=10,
                metadata=service.auth,
            )

        def new(i: int, n: int) -> None:  # a basket's first Reserve: three lines reserved
            reserve(f"bench-{i}-{n}", i, n)

        def replace(i: int, n: int) -> None:  # the caller's reservation set to 3 other SKUs: 3 released, 3 reserved
            reserve(f"bench-replaced-{i}", i, n)

        _run(16, 1.0, new)  # warm up
        rate, samples = _run(16, seconds, new)
        replace_rate, replace_samples = _run(16, seconds / 2, replace)
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
            note="a new reservation of 3 lines per call: 3 levels and 3 StockLevelChanged",
        ),
        Figure("reserve_3_lines_pg_p99_ms_16", lat["p99_ms"], "ms", at_most=30.0),
        Figure("reserve_3_lines_pg_p50_ms_16", lat["p50_ms"], "ms"),
        Figure(
            "reserve_replace_3_lines_pg_calls_per_s_16",
            replace_rate,
            "calls/s",
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(replace_rate, "grpc_echo_calls_per_s_16"),
            note=f"reference, no target: a reservation's 3 lines set to 3 other SKUs (6 levels, 6 events); p99 "
            f"{summarise_latencies(replace_samples)['p99_ms']:.1f} ms",
        ),
    ]


def _get_item_rate(quick: bool, **settings: str) -> tuple[float, list[float]]:
    name, url = _database()
    service = _Service(url, **settings)
    try:
        _load(service.stub, 10)

        def get(i: int, n: int) -> None:
            request = stock_pb2.GetItemRequest(store_id=STORE, sku=f"B-{(i + n) % SKUS:04d}")
            service.hot.GetItem(request, timeout=10, metadata=service.auth)

        # Steady state: every SKU asked once before measuring (a till scans what was scanned before). Without it the
        # callers, walking the SKUs together, would spend the first seconds filling answers one miss at a time.
        for n in range(SKUS):
            get(0, n)
        _run(16, 1.0, get)
        return _run(16, 2.0 if quick else 6.0, get)
    finally:
        service.close()
        _drop(name)


@scenario("stock_get_item", group="stock")
def stock_get_item(bench: Bench) -> list[Figure]:
    rate, samples = _get_item_rate(bench.quick)
    uncached, _ = _get_item_rate(True, GET_ITEM_CACHE_SIZE="0")
    lat = summarise_latencies(samples)
    return [
        Figure(
            "get_item_pg_calls_per_s_16",
            rate,
            "calls/s",
            at_least=2500.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
            note="answers kept in memory (the default), every SKU asked once before",
        ),
        Figure("get_item_pg_p99_ms_16", lat["p99_ms"], "ms"),
        Figure(
            "get_item_pg_uncached_calls_per_s_16",
            uncached,
            "calls/s",
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(uncached, "grpc_echo_calls_per_s_16"),
            note="reference, no target: GET_ITEM_CACHE_SIZE=0, one read of the database per call",
        ),
    ]


IMPORT_BATCH = 1000  # rows per message of the batched stream
IMPORT_STORES = ["berlin-mitte", "zurich-bahnhofstrasse", "new-york-5th-ave", "tokyo-shibuya"]


def _import_stream(
    rows: int, batch: int = IMPORT_BATCH, request_id: str = "bench-import"
) -> Iterator[stock_pb2.ImportStockLevelsRequest]:
    """`rows` level rows (300 SKUs x 4 stores, repeating), `batch` rows per message; batch 0: one `row` each."""

    def key(n: int) -> tuple[str, str]:
        return IMPORT_STORES[n % 4], f"B-{(n // 4) % SKUS:04d}"

    if not batch:
        for n in range(rows):
            store_id, sku = key(n)
            row = stock_pb2.StockLevelRow(store_id=store_id, sku=sku, on_hand=n)
            yield stock_pb2.ImportStockLevelsRequest(request_id=request_id, row=row)
        return
    for start in range(0, rows, batch):
        message = stock_pb2.ImportStockLevelsRequest(request_id=request_id)
        add = message.rows.add  # in place: no copy of every row into the message
        for n in range(start, min(rows, start + batch)):
            store_id, sku = key(n)
            add(store_id=store_id, sku=sku, on_hand=n)
        yield message


def _count_rows(
    requests: Iterator[stock_pb2.ImportStockLevelsRequest], _context: object
) -> stock_pb2.ImportStockLevelsResponse:
    received = sum(m.HasField("row") + len(m.rows) for m in requests)
    return stock_pb2.ImportStockLevelsResponse(summary=stock_pb2.ImportSummary(received=received))


def _serve_counter() -> None:
    """`python -m benchmarks.stock`: a bare grpcio server whose ImportStockLevels only counts rows; prints its
    port."""
    handler = grpc.stream_unary_rpc_method_handler(
        _count_rows,
        request_deserializer=stock_pb2.ImportStockLevelsRequest.FromString,
        response_serializer=stock_pb2.ImportStockLevelsResponse.SerializeToString,
    )
    serve_bare("bench.Import", "Import", handler)


def _bare_stream_rows_per_s(rows: int, batch: int) -> float:
    """The import's floor: the same client stream into a grpcio handler that only counts the rows. The handler runs
    in a process of its own, as the stock service does, so client and server do not share one GIL."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.stock"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"counting server did not start: {port!r}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_unary(
                "/bench.Import/Import",
                request_serializer=stock_pb2.ImportStockLevelsRequest.SerializeToString,
                response_deserializer=stock_pb2.ImportStockLevelsResponse.FromString,
            )
            call(_import_stream(100, batch), timeout=60)  # warm up the channel and the server
            started = time.perf_counter()
            reply = call(_import_stream(rows, batch), timeout=600)
            elapsed = time.perf_counter() - started
        assert reply.summary.received == rows, reply.summary
        return rows / elapsed
    finally:
        proc.terminate()
        proc.wait(10)


def _import_rows_per_s(
    stub: stock_pb2_grpc.StockServiceStub, url: str, rows: int, batch: int, request_id: str
) -> float:
    _wait_outbox_sent(url)  # the relay is done with earlier events: each import is measured on its own
    started = time.perf_counter()
    summary = stub.ImportStockLevels(_import_stream(rows, batch, request_id), timeout=600).summary
    elapsed = time.perf_counter() - started
    assert (summary.received, summary.rejected) == (rows, 0), summary
    return rows / elapsed


class _PeakRss:
    """The highest resident set size of a process while the block runs, in MB above what it was at the start."""

    def __init__(self, pid: int) -> None:
        self.pid, self.growth_mb = pid, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRss:
        self._start = self._peak = _rss_mb(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, _rss_mb(self.pid))

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.growth_mb = max(self._peak, _rss_mb(self.pid)) - self._start


def _wait_outbox_sent(url: str, timeout: float = 120.0) -> None:
    engine = create_engine(url)
    try:
        deadline = time.perf_counter() + timeout
        with engine.connect() as conn:
            while conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")).scalar():
                conn.rollback()
                if time.perf_counter() > deadline:
                    raise TimeoutError("the outbox relay did not catch up")
                time.sleep(0.1)
    finally:
        engine.dispose()


@scenario("stock_import_levels", group="stock")
def stock_import_levels(bench: Bench) -> list[Figure]:
    name, url = _database()
    service = _Service(url)
    rows = 20_000 if bench.quick else 100_000
    single_rows = 5_000 if bench.quick else 20_000
    try:
        _load(service.stub, 1)
        # Memory: an import a fifth as long first, then the measured one; bounded memory means the longer one grows the
        # process by about as much as the shorter one did, not five times as much.
        with _PeakRss(service.proc.pid) as short:
            _import_rows_per_s(service.stub, url, rows // 5, IMPORT_BATCH, "bench-import-short")
        with _PeakRss(service.proc.pid) as long:
            rate = _import_rows_per_s(service.stub, url, rows, IMPORT_BATCH, "bench-import")
        single_rate = _import_rows_per_s(service.stub, url, single_rows, 0, "bench-import-unbatched")
    finally:
        service.close()
        _drop(name)
    floor = _bare_stream_rows_per_s(rows, IMPORT_BATCH)
    single_floor = _bare_stream_rows_per_s(single_rows, 0)
    return [
        Figure(
            "import_stock_levels_pg_rows_per_s",
            rate,
            "rows/s",
            at_least=20_000.0,
            floor="import_bare_stream_rows_per_s",
            ratio=rate / floor,
            note=f"{IMPORT_BATCH} rows per message; rows repeat keys (300 SKUs x 4 stores), every row a change with"
            " its event",
        ),
        Figure(
            "import_peak_rss_growth_mb",
            long.growth_mb,
            "MB",
            # Bounded: at most what the import a fifth as long took, plus 16 MB of allocator slack.
            at_most=max(short.growth_mb, 0.0) + 16.0,
            note=f"{rows} rows; the same import of {rows // 5} rows grew it by {short.growth_mb:.1f} MB",
        ),
        Figure(
            "import_bare_stream_rows_per_s",
            floor,
            "rows/s",
            note=f"floor: the same stream ({IMPORT_BATCH} rows per message) into a grpcio handler in another process"
            " that only counts rows",
        ),
        Figure(
            "import_stock_levels_pg_unbatched_rows_per_s",
            single_rate,
            "rows/s",
            floor="import_bare_stream_unbatched_rows_per_s",
            ratio=single_rate / single_floor,
            note=f"reference, no target: {single_rows} rows, one `row` per message",
        ),
        Figure(
            "import_bare_stream_unbatched_rows_per_s",
            single_floor,
            "rows/s",
            note="reference: the one-row-per-message stream into the counting handler",
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
        with service.connect() as other:
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


if __name__ == "__main__":
    _serve_counter()
