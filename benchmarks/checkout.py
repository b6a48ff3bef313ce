"""Checkout scenarios (#17): the whole sale through the gateway on the distributed stack, the lag from a completed sale
to its effects in stock and loyalty, and an offline upload of many sales in one stream.

The distributed stack is the one of the end-to-end tests: checkout, stock, customer, loyalty and the gateway each a
process of its own, each service on a fresh PostgreSQL database of its own, events over a fresh RabbitMQ vhost, all
trusting a bench issuer; the demo data is seeded through the gateway. Every process, database and vhost is removed
afterwards, also when a scenario fails. The tills are threads of this process (the load generator), each with a
connection and a terminal id of its own, sending the token as plain metadata (no client interceptor in the
measurement).

`python -m benchmarks.checkout` serves a bare grpcio UploadOfflineSales that only counts the sales (the offline
upload's floor) and prints its port.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pika

from benchmarks.harness import Bench, Figure, percentile, scenario, serve_bare, summarise_latencies
from benchmarks.messaging import AMQP
from benchmarks.stack import PROCESSES, _wait_serving, auth_environment, bearer, bench_issuer
from benchmarks.stock import _database, _drop, _PeakRss, _wait_outbox_sent
from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.checkout.v1 import events_pb2 as checkout_events
from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_cli import demo_data
from storeplane_cli.seed import seed
from storeplane_runtime.messaging import EXCHANGE
from storeplane_runtime.messaging.topology import declare_exchange
from storeplane_runtime.testing import free_port_block

STORE = "berlin-mitte"
CURRENCY = "EUR"
TILLS = 16
TRACING_ROUNDS = 10  # windows per configuration in the tracing-cost scenario
ITEMS = 60  # distinct items the tills sell (spread over stock levels, as a shop's sales are)
CUSTOMERS = 64  # the demo customers plus registered ones: each till has customers of its own
ON_HAND = 10_000_000
REDEEM = 100
CALL_TIMEOUT = 10.0
RABBITMQ_BASE = AMQP.rsplit("/", 1)[0]  # the bench broker without its vhost
# One connection per till, as separate tills have: without it grpcio shares one connection between equal channels.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


# --- the stack -------------------------------------------------------------------------------------------------------


@dataclass
class _Stack:
    addresses: dict[str, str]
    children: dict[str, subprocess.Popen[bytes]]
    databases: dict[str, tuple[str, str]]  # service -> (database name, URL)
    vhost: str
    token: str

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token)


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=False)


def _add_vhost() -> str:
    vhost = f"sp_bench_{uuid.uuid4().hex[:10]}"
    added = _rabbitmqctl("add_vhost", vhost)
    if added.returncode != 0:
        raise RuntimeError(f"rabbitmqctl add_vhost failed: {(added.stderr or added.stdout).strip()}")
    return vhost


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every child at once, then wait for each (killed after 20 s)."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _report_logs(children: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
    """One line per process of what it logged (each message with its count): the services' warnings are kept out of
    the report, not lost. A process that did not end cleanly gets the end of its log."""
    for name, path in logs.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        messages: dict[str, int] = {}
        errors: dict[str, str] = {}
        for line in text.splitlines():
            try:
                record = json.loads(line)
                message, level = str(record.get("message", line)), record.get("level")
            except (ValueError, AttributeError):
                message, level = line, None
            messages[message[:80]] = messages.get(message[:80], 0) + 1
            if level in ("ERROR", "CRITICAL") or "failed" in message:
                errors.setdefault(message[:80], line[:600])
        if messages:
            top = sorted(messages.items(), key=lambda kv: -kv[1])[:4]
            print(f"  {name} logged: " + "; ".join(f"{n} x {m!r}" for m, n in top), file=sys.stderr)
        for first in errors.values():  # the first of each kind of failure, in full
            print(f"    {first}", file=sys.stderr)
        child = children.get(name)
        if child is not None and child.returncode not in (0, None):
            tail = "\n    ".join(text.splitlines()[-20:])
            print(f"  {name} exited with {child.returncode}:\n    {tail}", file=sys.stderr)


@contextlib.contextmanager
def _stack(names: tuple[str, ...], extra_env: dict[str, str] | None = None) -> Iterator[_Stack]:
    """The named processes, each service on a fresh PostgreSQL database, AMQP_URL to a fresh vhost (and `extra_env`
    for every child); all removed when the block ends, whatever happened."""
    with contextlib.ExitStack() as cleanup:
        keys = tempfile.mkdtemp(prefix="sp-bench-checkout-")
        cleanup.callback(shutil.rmtree, keys, ignore_errors=True)
        issuer = bench_issuer(keys)
        token = issuer.mint(subject="bench", ttl_seconds=6 * 3600)
        vhost = _add_vhost()
        cleanup.callback(_rabbitmqctl, "delete_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        databases: dict[str, tuple[str, str]] = {}
        for name in names:
            if name != "gateway":
                databases[name] = _database()
                cleanup.callback(_drop, databases[name][0])
        base = free_port_block(len(PROCESSES))
        addresses = {name: f"127.0.0.1:{base + i}" for i, name in enumerate(PROCESSES)}
        env = {
            **os.environ,
            "GRPC_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "DATA_DIR": keys,
            "LOG_LEVEL": "WARNING",
            "AMQP_URL": f"{RABBITMQ_BASE}/{vhost}",
            "SHUTDOWN_GRACE_SECONDS": "2",
            # The gateway's limiter works as deployed, but its limit must not turn the tills away mid-measurement.
            "RATE_LIMIT_PER_SECOND": "1000000",
            "RATE_LIMIT_BURST": "1000000",
            **auth_environment(issuer),
            **{f"{n.upper()}_ADDR": addresses[n] for n in PROCESSES if n != "gateway"},
            **(extra_env or {}),
        }
        children: dict[str, subprocess.Popen[bytes]] = {}
        logs: dict[str, Path] = {}
        cleanup.callback(_report_logs, children, logs)
        cleanup.callback(_stop_all, children)  # runs first: before the logs are read, the databases and vhost go
        for name in names:
            child_env = {**env, "GRPC_PORT": addresses[name].rsplit(":", 1)[1]}
            if name in databases:
                child_env["DATABASE_URL"] = databases[name][1]
            logs[name] = Path(keys) / f"{name}.log"
            with logs[name].open("wb") as log:  # the child has its own copy of the descriptor
                children[name] = subprocess.Popen(
                    [sys.executable, "-m", name], env=child_env, cwd=keys, stdout=subprocess.DEVNULL, stderr=log
                )
        _wait_serving([addresses[name] for name in names], timeout=120)
        yield _Stack(addresses, children, databases, vhost, token)


def _wait_quiet(stack: _Stack, timeout: float = 120.0) -> None:
    """Every outbox relayed and every queue of the vhost empty: what the setup caused is applied before measuring."""
    for _, url in stack.databases.values():
        _wait_outbox_sent(url, timeout)
    deadline = time.perf_counter() + timeout
    while True:
        listed = _rabbitmqctl("list_queues", "-q", "-p", stack.vhost, "name", "messages")
        depths = [line.split()[-1] for line in listed.stdout.splitlines()[1:] if line.strip()]
        if listed.returncode == 0 and all(d == "0" for d in depths):
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"queues of {stack.vhost} not drained: {listed.stdout}")
        time.sleep(0.2)


# --- the demo data, stock and customers with points ----------------------------------------------------------------


@dataclass(frozen=True)
class _Customer:
    customer_id: str
    card: str


def _items() -> list[demo_data.DemoItem]:
    return [item for item in demo_data.catalogue() if CURRENCY in item.prices_minor][:ITEMS]


def _prepare(stack: _Stack, points: int) -> list[_Customer]:
    """The demo data seeded through the gateway, plenty of stock on the shelf for the items sold, and CUSTOMERS
    customers (the demo ones, then registered ones) enrolled in loyalty with `points` each (a PROMOTION adjustment)."""
    report = seed(stack.addresses["gateway"], stack.token, timeout=120)
    if not report.ok or report.pending:
        raise RuntimeError(f"seeding failed:\n{report.render()}")
    channel = grpc.insecure_channel(stack.addresses["gateway"])
    try:
        auth = stack.auth
        stock = stock_pb2_grpc.StockServiceStub(channel)
        stock.ImportStockLevels(
            iter(
                [
                    stock_pb2.ImportStockLevelsRequest(
                        request_id=str(uuid.uuid4()),
                        rows=[stock_pb2.StockLevelRow(store_id=STORE, sku=i.sku, on_hand=ON_HAND) for i in _items()],
                    )
                ]
            ),
            timeout=60,
            metadata=auth,
        )
        customers_stub = customer_pb2_grpc.CustomerServiceStub(channel)
        cards = [person.loyalty_card_number for person in demo_data.customers()]
        customers = [
            _Customer(
                customers_stub.FindCustomer(
                    customer_pb2.FindCustomerRequest(loyalty_card_number=card), timeout=10, metadata=auth
                ).customer.customer_id,
                card,
            )
            for card in cards
        ]
        for n in range(CUSTOMERS - len(customers)):
            registered = customers_stub.RegisterCustomer(
                customer_pb2.RegisterCustomerRequest(
                    request_id=str(uuid.uuid4()),
                    customer=customer_pb2.Customer(
                        given_name="Bench",
                        family_name=f"Till {n}",
                        email=f"bench-{n}-{uuid.uuid4().hex[:8]}@example.com",
                        home_store_id=STORE,
                    ),
                ),
                timeout=10,
                metadata=auth,
            ).customer
            customers.append(_Customer(registered.customer_id, registered.loyalty_card_number))
        loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
        deadline = time.perf_counter() + 60
        for customer in customers:  # loyalty enrols them from CustomerRegistered
            while True:
                try:
                    loyalty.GetAccount(
                        loyalty_pb2.GetAccountRequest(customer_id=customer.customer_id), timeout=10, metadata=auth
                    )
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND or time.perf_counter() > deadline:
                        raise
                    time.sleep(0.05)
            if points:
                loyalty.AdjustPoints(
                    loyalty_pb2.AdjustPointsRequest(
                        customer_id=customer.customer_id,
                        points=points,
                        reason=loyalty_pb2.ADJUSTMENT_REASON_PROMOTION,
                        note="bench",
                        request_id=str(uuid.uuid4()),
                    ),
                    timeout=10,
                    metadata=auth,
                )
    finally:
        channel.close()
    _wait_quiet(stack)
    return customers


# --- a till ----------------------------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """What one till saw: latencies per call kind (seconds), whole sales, failures."""

    calls: dict[str, list[float]] = field(default_factory=dict)
    sales: list[float] = field(default_factory=list)
    unreserved_lines: int = 0
    short_redemptions: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def timed(self, kind: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        reply = call()
        self.calls.setdefault(kind, []).append(time.perf_counter() - started)
        return reply

    def merge(self, other: _Tally) -> None:
        for kind, samples in other.calls.items():
            self.calls.setdefault(kind, []).extend(samples)
        self.sales.extend(other.sales)
        self.unreserved_lines += other.unreserved_lines
        self.short_redemptions += other.short_redemptions
        for code, count in other.failures.items():
            self.failures[code] = self.failures.get(code, 0) + count


def _rid() -> str:
    return str(uuid.uuid4())


class _Till:
    """One till: its own connection to the gateway and its own terminal id."""

    def __init__(self, stack: _Stack, number: int) -> None:
        self.channel = grpc.insecure_channel(stack.addresses["gateway"], options=OWN_CONNECTION)
        self.checkout = checkout_pb2_grpc.CheckoutServiceStub(self.channel)
        self.auth = stack.auth
        self.terminal = f"bench-till-{number:02d}"

    def close(self) -> None:
        self.channel.close()

    def sale(self, barcodes: list[str], customer: _Customer | None, redeem: int, tally: _Tally) -> Any:
        """OpenBasket, a scan per barcode, with a customer AttachCustomer (by card) and RedeemPoints, CompleteSale by
        card for the basket's total; returns the sale. Latencies go to `tally`."""
        checkout, auth = self.checkout, self.auth
        started = time.perf_counter()
        basket = tally.timed(
            "open",
            lambda: checkout.OpenBasket(
                checkout_pb2.OpenBasketRequest(
                    store_id=STORE, terminal_id=self.terminal, cashier_id="bench", request_id=_rid()
                ),
                timeout=CALL_TIMEOUT,
                metadata=auth,
            ),
        ).basket
        basket_id = basket.basket_id
        for barcode in barcodes:
            request = checkout_pb2.ScanItemRequest(basket_id=basket_id, barcode=barcode, request_id=_rid())
            basket = tally.timed(
                "scan", functools.partial(checkout.ScanItem, request, timeout=CALL_TIMEOUT, metadata=auth)
            ).basket
        tally.unreserved_lines += sum(not line.reserved for line in basket.lines)
        if customer is not None:
            basket = tally.timed(
                "attach",
                lambda: checkout.AttachCustomer(
                    checkout_pb2.AttachCustomerRequest(
                        basket_id=basket_id, loyalty_card_number=customer.card, request_id=_rid()
                    ),
                    timeout=CALL_TIMEOUT,
                    metadata=auth,
                ),
            ).basket
            if redeem:
                basket = tally.timed(
                    "redeem",
                    lambda: checkout.RedeemPoints(
                        checkout_pb2.RedeemPointsRequest(basket_id=basket_id, points=redeem, request_id=_rid()),
                        timeout=CALL_TIMEOUT,
                        metadata=auth,
                    ),
                ).basket
                tally.short_redemptions += basket.points_redeemed != redeem
        tender = checkout_pb2.Tender(type=checkout_pb2.TENDER_TYPE_CARD, amount=basket.total)
        sale = tally.timed(
            "complete",
            lambda: checkout.CompleteSale(
                checkout_pb2.CompleteSaleRequest(basket_id=basket_id, tenders=[tender], request_id=_rid()),
                timeout=CALL_TIMEOUT,
                metadata=auth,
            ),
        ).sale
        tally.sales.append(time.perf_counter() - started)
        return sale


def _barcodes(items: list[demo_data.DemoItem], till: int, n: int) -> list[str]:
    """Three different items, varying from sale to sale and from till to till."""
    first = (till * 7 + n * 3) % len(items)
    return [items[(first + k) % len(items)].barcode for k in range(3)]


def _failure(exc: Exception) -> str:
    return exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__


# --- where the CPU goes ----------------------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # the process ended
        return ""


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process: its parent, name and CPU seconds used so far (user + system)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return found


def _machine_busy_seconds() -> float:
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


class _CpuWindow:
    """CPU seconds per process group while the block runs: each child of the stack (with its own children), this
    process (the load generator), PostgreSQL (the backends of the stack's databases and the server's own background
    processes), RabbitMQ (beam.smp), and the rest of the machine."""

    def __init__(self, stack: _Stack) -> None:
        self.children = {proc.pid: name for name, proc in stack.children.items()}
        self.databases = [name for name, _ in stack.databases.values()]
        self.seconds: dict[str, float] = {}
        self.elapsed = 0.0

    def _group(self, pid: int, processes: dict[int, tuple[int, str, float]]) -> str:
        if pid == os.getpid():
            return "load_generator"
        ancestor, hops = pid, 0
        while ancestor in processes and hops < 10:
            if ancestor in self.children:
                return self.children[ancestor]
            ancestor, hops = processes[ancestor][0], hops + 1
        name = processes[pid][1]
        if name == "postgres":
            cmdline = _read(f"/proc/{pid}/cmdline")
            if any(database in cmdline for database in self.databases):
                return "postgres"
            is_backend = "(" in cmdline or "[local]" in cmdline
            return "other" if is_backend else "postgres"  # another client's backend, or the server's own work
        if name == "beam.smp":
            return "rabbitmq"
        return "other"

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        processes = _processes()
        return {pid: (self._group(pid, processes), cpu) for pid, (_, _, cpu) in processes.items()}

    def __enter__(self) -> _CpuWindow:
        self._before = self._snapshot()
        self._busy = _machine_busy_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        busy = _machine_busy_seconds() - self._busy
        after = self._snapshot()
        for pid, (group, cpu) in after.items():
            if group != "other":
                previous = self._before.get(pid, (group, 0.0))[1]
                self.seconds[group] = self.seconds.get(group, 0.0) + cpu - previous
        self.seconds["other"] = max(0.0, busy - sum(self.seconds.values()))
        self.machine_busy = busy

    def summary(self) -> str:
        """Where the CPU went, in % of one core, busiest first."""
        shares = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        parts = [f"{group} {100 * seconds / self.elapsed:.0f}%" for group, seconds in shares if seconds > 0]
        return f"CPU (% of a core): {', '.join(parts)}; machine {100 * self.machine_busy / self.elapsed:.0f}%"

    def figures(self, prefix: str = "cpu_share_") -> list[Figure]:
        order = [*PROCESSES, "postgres", "rabbitmq", "load_generator", "other"]
        capacity = 100 * (os.cpu_count() or 1)
        figures = []
        for group in order:
            seconds = self.seconds.get(group, 0.0)
            note = f"{seconds:.1f} CPU s in {self.elapsed:.1f} s; 100 = one core busy all the window"
            if group == "other":
                note = f"the rest of the machine (other processes, kernel); {seconds:.1f} CPU s"
            elif group == "postgres":
                note += " (the stack's backends and the server's background processes)"
            figures.append(Figure(f"{prefix}{group}", 100 * seconds / self.elapsed, "%core", note=note))
        figures.append(
            Figure(
                f"{prefix}machine_busy",
                100 * self.machine_busy / self.elapsed,
                "%core",
                note=f"all of the machine, of {capacity} ({os.cpu_count()} cores)",
            )
        )
        return figures


# --- 1. the sale flow ------------------------------------------------------------------------------------------------


def _ring_up(
    stack: _Stack,
    items: list[demo_data.DemoItem],
    customers: list[_Customer],
    seconds: float,
    first_sale: int,
    count: int = TILLS,
) -> tuple[_Tally, float]:
    """`count` tills ring up sales for `seconds`; 1 in 4 with a customer of the till's own and REDEEM points. Returns
    the tallies and the time from start until the last sale finished."""
    tallies = [_Tally() for _ in range(count)]
    tills = [_Till(stack, i) for i in range(count)]
    mine = [customers[i::count] for i in range(count)]
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        n = first_sale
        while time.perf_counter() < stop:
            with_customer = (n + i) % 4 == 0
            customer = mine[i][(n // 4) % len(mine[i])] if with_customer else None
            try:
                tills[i].sale(_barcodes(items, i, n), customer, REDEEM, tallies[i])
            except Exception as exc:
                tallies[i].failures[_failure(exc)] = tallies[i].failures.get(_failure(exc), 0) + 1
            n += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for till in tills:
            till.close()
    elapsed = time.perf_counter() - started
    total = _Tally()
    for tally in tallies:
        total.merge(tally)
    return total, elapsed


def _cpu_ms_per_sale(cpu: _CpuWindow, sales: int) -> str:
    per_sale = sorted(((1e3 * seconds / max(sales, 1), group) for group, seconds in cpu.seconds.items()), reverse=True)
    return ", ".join(f"{group} {ms:.1f}" for ms, group in per_sale)


@scenario("checkout_sale_flow", group="checkout")
def checkout_sale_flow(bench: Bench) -> list[Figure]:
    seconds = 4.0 if bench.quick else 15.0
    with _stack(PROCESSES) as stack:
        customers = _prepare(stack, points=1_000_000)
        items = _items()
        _ring_up(stack, items, customers, 1.0 if bench.quick else 3.0, first_sale=0)  # warm up caches, pools
        _wait_quiet(stack)
        with _CpuWindow(stack) as alone_cpu:
            alone, _ = _ring_up(stack, items, customers, 1.0 if bench.quick else 3.0, first_sale=500, count=1)
        _wait_quiet(stack)
        with _CpuWindow(stack) as cpu:
            tally, elapsed = _ring_up(stack, items, customers, seconds, first_sale=1000)
    sales = len(tally.sales)
    rate = sales / elapsed
    lat = summarise_latencies(tally.sales)
    scan = summarise_latencies(tally.calls.get("scan", []))
    per_call = ", ".join(f"{kind} {percentile(v, 99) * 1e3:.1f}" for kind, v in tally.calls.items())
    failed = sum(tally.failures.values())
    alone_lat = summarise_latencies(alone.sales)
    alone_calls = ", ".join(f"{kind} {percentile(v, 50) * 1e3:.1f}" for kind, v in alone.calls.items())
    per_sale = _cpu_ms_per_sale(cpu, sales)
    alone_per_sale = _cpu_ms_per_sale(alone_cpu, len(alone.sales))
    return [
        Figure(
            "sale_flow_sales_per_s_16",
            rate,
            "sales/s",
            at_least=100.0,
            floor="grpc_echo_calls_per_s_16",
            ratio=bench.ratio(rate, "grpc_echo_calls_per_s_16"),
            note=f"{TILLS} tills through the gateway, 5 processes on PostgreSQL + RabbitMQ: OpenBasket, 3 ScanItem by "
            f"barcode, 1 in 4 AttachCustomer (card) + RedeemPoints {REDEEM}, CompleteSale by card; {sales} sales in "
            f"{elapsed:.1f} s; {tally.unreserved_lines} lines unreserved, {tally.short_redemptions} short redemptions",
        ),
        Figure("sale_flow_p99_ms", lat["p99_ms"], "ms", at_most=250.0, note=f"whole sale; p99 per call: {per_call}"),
        Figure("sale_flow_p50_ms", lat["p50_ms"], "ms"),
        Figure("scan_item_p99_ms", scan["p99_ms"], "ms", at_most=40.0, note="through the gateway, Reserve included"),
        Figure("scan_item_p50_ms", scan["p50_ms"], "ms"),
        Figure("sale_flow_failed_sales", float(failed), "sales", at_most=0.0, note=str(tally.failures or "")),
        Figure(
            "sale_flow_unreserved_lines_pct",
            100 * tally.unreserved_lines / max(1, len(tally.calls.get("scan", []))),
            "%",
            note="lines the scan left unreserved: stock.Reserve over checkout's 300 ms budget, or its breaker open "
            "(such scans do not wait for stock)",
        ),
        Figure(
            "sale_flow_1_till_p50_ms",
            alone_lat["p50_ms"],
            "ms",
            note=f"reference: one till alone, {len(alone.sales)} sales; p50 per call: {alone_calls}; CPU ms per sale: "
            + alone_per_sale,
        ),
        Figure(
            "sale_flow_cpu_ms_per_sale",
            1e3 * cpu.machine_busy / sales,
            "ms",
            note="CPU of the whole machine per sale in the 16-till window; per process: " + per_sale,
        ),
        Figure(
            "gateway_cpu_ms_per_sale",
            1e3 * cpu.seconds.get("gateway", 0.0) / max(sales, 1),
            "ms",
            at_most=1.5,
            note="the edge's CPU per sale in the 16-till window: Envoy and the companion beside it",
        ),
        *cpu.figures(),
    ]


# --- 1b. what tracing costs the sale flow ---------------------------------------------------------------------------


class _SpanSink:
    """An OTLP/HTTP receiver that takes every export and keeps nothing but a count of bytes (what a collector costs
    the processes is the export itself, not what the collector does with it)."""

    def __init__(self) -> None:
        import http.server

        received = [0]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received[0] += len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@scenario("checkout_tracing_cost", group="checkout")
def checkout_tracing_cost(bench: Bench) -> list[Figure]:
    """The sale flow untraced, traced with a sampler of 1.0 and with parentbased_traceidratio 0.01, every span
    exported over OTLP/HTTP to a receiver in this process. The three stacks are up at once and 16 tills drive one
    at a time, in short windows taken in turn (the order rotating each round): on a shared machine, runs of one
    configuration minutes apart differed by up to 25 %, more than the cost measured; windows seconds apart see the
    same machine. The figure is the mean rate of each configuration's windows; CPU per sale is reported beside it."""
    sink = _SpanSink()
    traced = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
    configurations = {
        "untraced": {},
        "every": {**traced, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0"},
        "sampled": {**traced, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    }
    names = list(configurations)
    rounds, seconds = (1, 4.0) if bench.quick else (TRACING_ROUNDS, 5.0)
    rates: dict[str, list[float]] = {name: [] for name in names}
    exported: dict[str, int] = dict.fromkeys(names, 0)
    cpu_ms: dict[str, dict[str, float]] = {name: {} for name in names}
    sales: dict[str, int] = dict.fromkeys(names, 0)
    items = _items()
    try:
        with contextlib.ExitStack() as stacks:
            prepared: dict[str, tuple[_Stack, list[_Customer]]] = {}
            for name in names:
                stack = stacks.enter_context(_stack(PROCESSES, configurations[name]))
                customers = _prepare(stack, points=1_000_000)
                _ring_up(stack, items, customers, 1.0 if bench.quick else 3.0, first_sale=0)  # caches, pools
                _wait_quiet(stack)
                prepared[name] = (stack, customers)
            for round_ in range(rounds):
                for name in names[round_ % 3 :] + names[: round_ % 3]:
                    stack, customers = prepared[name]
                    before = sink.received[0]
                    with _CpuWindow(stack) as cpu:
                        tally, elapsed = _ring_up(stack, items, customers, seconds, first_sale=1000 * (round_ + 1))
                    _wait_quiet(stack)  # its consumers' backlog is not the next window's load
                    rates[name].append(len(tally.sales) / elapsed)
                    exported[name] += sink.received[0] - before
                    sales[name] += len(tally.sales)
                    for group, cpu_seconds in cpu.seconds.items():
                        cpu_ms[name][group] = cpu_ms[name].get(group, 0.0) + 1e3 * cpu_seconds
    finally:
        sink.close()
    untraced, every, sampled = (sum(rates[n]) / len(rates[n]) for n in names)

    def cost(rate: float) -> float:
        return 100.0 * (untraced - rate) / untraced if untraced else 0.0

    def spread(name: str) -> str:
        """The cost in each round (three windows seconds apart) and its mean with two standard errors: how far
        the machine's drift leaves the figure uncertain."""
        paired = [100.0 * (u - r) / u for u, r in zip(rates["untraced"], rates[name], strict=True) if u]
        if len(paired) < 2:
            return "one round"
        mean = statistics.fmean(paired)
        error = 2 * statistics.stdev(paired) / len(paired) ** 0.5
        return f"per round {', '.join(f'{c:.0f}' for c in paired)} %: {mean:.1f} ± {error:.1f} %"

    def runs(name: str) -> str:
        return ", ".join(f"{rate:.1f}" for rate in rates[name])

    def per_sale(name: str) -> str:
        total = sum(cpu_ms[name].values()) / max(sales[name], 1)
        busiest = sorted(cpu_ms[name].items(), key=lambda kv: -kv[1])
        return (
            f"CPU {total:.1f} ms per sale ("
            + ", ".join(f"{group} {ms / max(sales[name], 1):.1f}" for group, ms in busiest)
            + ")"
        )

    return [
        Figure(
            "sale_flow_sales_per_s_untraced",
            untraced,
            "sales/s",
            note=f"16 tills, no exporter: no spans made; mean of windows {runs('untraced')}; {per_sale('untraced')}",
        ),
        Figure(
            "sale_flow_sales_per_s_traced_1",
            every,
            "sales/s",
            note=f"parentbased_traceidratio 1.0; windows {runs('every')}; {exported['every'] / 1e6:.1f} MB of spans; "
            + per_sale("every"),
        ),
        Figure(
            "sale_flow_sales_per_s_traced_001",
            sampled,
            "sales/s",
            note=f"parentbased_traceidratio 0.01; windows {runs('sampled')}; {exported['sampled'] / 1e6:.2f} MB of "
            f"spans; {per_sale('sampled')}",
        ),
        Figure(
            "tracing_cost_pct_1",
            cost(every),
            "%",
            at_most=15.0,
            note=f"throughput lost to tracing every sale (means of the windows above); {spread('every')}",
        ),
        Figure(
            "tracing_cost_pct_001",
            cost(sampled),
            "%",
            at_most=3.0,
            note=f"throughput lost with 1 % sampled; {spread('sampled')}",
        ),
    ]


# --- 2. the lag from a sale to stock and loyalty ---------------------------------------------------------------------

LAG_RATE = 50.0  # sales per second
LAG_TILLS = 16
POINTS_EVERY = 5  # every 5th sale has a customer, whose points are watched
POLL_SECONDS = 0.005


class _StockWatcher:
    """A WatchStock stream of the store (straight to stock): when each sale's on-hand changes arrived."""

    def __init__(self, stack: _Stack) -> None:
        self.channel = grpc.insecure_channel(stack.addresses["stock"])
        stub = stock_pb2_grpc.StockServiceStub(self.channel)
        self.stream = stub.WatchStock(stock_pb2.WatchStockRequest(store_id=STORE), timeout=3600, metadata=stack.auth)
        self.stream.initial_metadata()  # the subscription is live
        self.arrived: dict[str, list[float]] = {}
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.stream:
                change = message.change
                if change.reason == stock_pb2.STOCK_CHANGE_REASON_SALE:
                    self.arrived.setdefault(change.reference_id, []).append(time.perf_counter())
        except grpc.RpcError:
            pass
        self.done.set()

    def close(self) -> None:
        self.stream.cancel()
        self.done.wait(5)
        self.channel.close()


class _PointsPoller:
    """For each sale handed to it, polls loyalty (straight, every POLL_SECONDS) until the customer's newest EARN
    entries name the sale: when its points appeared (upper bound: the answer that first showed them)."""

    def __init__(self, stack: _Stack) -> None:
        self.channel = grpc.insecure_channel(stack.addresses["loyalty"])
        self.stub = loyalty_pb2_grpc.LoyaltyServiceStub(self.channel)
        self.auth = stack.auth
        self.inbox: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: dict[str, float] = {}
        self.handed = 0
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def hand(self, sale_id: str, customer_id: str) -> None:
        with self._lock:
            self.handed += 1
        self.inbox.put((sale_id, customer_id))

    def _poll(self) -> None:
        pending: dict[str, str] = {}  # sale id -> customer id
        while not self.stopping.is_set():
            while not self.inbox.empty():
                sale_id, customer_id = self.inbox.get()
                pending[sale_id] = customer_id
            for sale_id, customer_id in list(pending.items()):
                try:
                    reply = self.stub.ListTransactions(
                        loyalty_pb2.ListTransactionsRequest(
                            customer_id=customer_id, kinds=[loyalty_pb2.ENTRY_KIND_EARN], page_size=5
                        ),
                        timeout=CALL_TIMEOUT,
                        metadata=self.auth,
                    )
                except grpc.RpcError:
                    continue  # asked again in the next round; a sale never seen counts as missed
                if any(entry.sale_id == sale_id for entry in reply.entries):
                    self.seen[sale_id] = time.perf_counter()
                    del pending[sale_id]
            time.sleep(POLL_SECONDS)

    def close(self, drain: float) -> None:
        """Stop after the sales handed over so far were seen, or `drain` seconds."""
        deadline = time.perf_counter() + drain
        while len(self.seen) < self.handed and time.perf_counter() < deadline:
            time.sleep(0.05)
        self.stopping.set()
        self.thread.join(drain)
        self.channel.close()


@dataclass
class _Lags:
    stock: list[float]  # seconds, one per sale whose every on-hand change arrived
    points: list[float]  # seconds, one per sale with a customer whose EARN entry was read
    sales: int
    rate: float  # sales per second achieved
    stock_missed: int
    points_missed: int
    failures: dict[str, int]


def _drive(
    stack: _Stack, items: list[demo_data.DemoItem], customers: list[_Customer], rate: float, seconds: float, first: int
) -> _Lags:
    """LAG_TILLS tills sell at `rate` sales per second (sale k starts at k / rate, or as soon as a till is free when
    they fall behind) for `seconds`; every POINTS_EVERY-th sale has a customer, in turn."""
    total = int(rate * seconds)
    returned: dict[str, float] = {}
    expected: dict[str, int] = {}
    tally = _Tally()
    lock = threading.Lock()
    watcher = _StockWatcher(stack)
    poller = _PointsPoller(stack)
    tills = [_Till(stack, 100 + i) for i in range(LAG_TILLS)]
    tickets = itertools.count()
    start = time.perf_counter() + 0.1

    def work(i: int) -> None:
        local = _Tally()
        while (k := next(tickets)) < total:
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            customer = customers[(k // POINTS_EVERY) % len(customers)] if k % POINTS_EVERY == 0 else None
            try:
                sale = tills[i].sale(_barcodes(items, i, first + k), customer, 0, local)
            except Exception as exc:
                local.failures[_failure(exc)] = local.failures.get(_failure(exc), 0) + 1
                continue
            returned[sale.sale_id] = time.perf_counter()
            expected[sale.sale_id] = len({line.sku for line in sale.lines})
            if customer is not None:
                poller.hand(sale.sale_id, customer.customer_id)
        with lock:
            tally.merge(local)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(LAG_TILLS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        driven = time.perf_counter() - start
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and any(len(watcher.arrived.get(s, ())) < n for s, n in expected.items()):
            time.sleep(0.05)
        poller.close(drain=10)
    finally:
        for till in tills:
            till.close()
        watcher.close()
    stock_lags = []
    for sale_id, count in expected.items():
        arrived = sorted(watcher.arrived.get(sale_id, []))
        if len(arrived) >= count:  # a change the watcher had before CompleteSale returned counts as 0
            stock_lags.append(max(0.0, arrived[count - 1] - returned[sale_id]))
    points_lags = [max(0.0, at - returned[sale_id]) for sale_id, at in poller.seen.items()]
    return _Lags(
        stock_lags,
        points_lags,
        len(returned),
        len(returned) / driven,
        len(expected) - len(stock_lags),
        poller.handed - len(points_lags),
        tally.failures,
    )


REFERENCE_RATE = 20.0  # sales per second this machine sustains beside everything else


@scenario("checkout_event_lag", group="checkout")
def checkout_event_lag(bench: Bench) -> list[Figure]:
    """Sales at LAG_RATE per second (paced), from CompleteSale returning to (a) the watcher of the store's stock having
    every on-hand change of the sale, (b) the sale's EARN entry being readable in loyalty (every 5th sale). Before it,
    the same at REFERENCE_RATE, for reference (the pipeline's lag when the machine is not saturated)."""
    seconds = 5.0 if bench.quick else 20.0
    with _stack(PROCESSES) as stack:
        customers = _prepare(stack, points=0)
        items = _items()
        _ring_up(stack, items, customers, 1.0 if bench.quick else 2.0, first_sale=0)  # warm up
        _wait_quiet(stack)
        calm = _drive(stack, items, customers, REFERENCE_RATE, seconds / 2, first=1000)
        _wait_quiet(stack)
        lags = _drive(stack, items, customers, LAG_RATE, seconds, first=5000)
    stock, points = summarise_latencies(lags.stock), summarise_latencies(lags.points)
    calm_stock, calm_points = summarise_latencies(calm.stock), summarise_latencies(calm.points)
    failed = sum(lags.failures.values())
    return [
        Figure(
            "sale_to_stock_lag_p99_ms",
            stock["p99_ms"],
            "ms",
            at_most=200.0,
            note=f"CompleteSale returned -> a WatchStock watcher of the store has every on-hand change of the sale; "
            f"{len(lags.stock)} sales at {lags.rate:.0f} sales/s",
        ),
        Figure("sale_to_stock_lag_p50_ms", stock["p50_ms"], "ms"),
        Figure(
            "sale_to_points_lag_p99_ms",
            points["p99_ms"],
            "ms",
            at_most=200.0,
            note=f"CompleteSale returned -> the sale's EARN entry read from loyalty, polled every "
            f"{POLL_SECONDS * 1e3:g} ms (upper bound, resolution ~5 ms + one call); {len(lags.points)} sales "
            f"(every {POINTS_EVERY}th has a customer)",
        ),
        Figure("sale_to_points_lag_p50_ms", points["p50_ms"], "ms"),
        Figure(
            "event_lag_sales_per_s",
            lags.rate,
            "sales/s",
            note=f"paced at {LAG_RATE:g}/s by {LAG_TILLS} tills for {seconds:g} s ({lags.sales} sales); "
            f"{failed} failed {lags.failures or ''}",
        ),
        Figure("sale_to_stock_missed", float(lags.stock_missed), "sales", at_most=0.0),
        Figure("sale_to_points_missed", float(lags.points_missed), "sales", at_most=0.0),
        Figure(
            f"sale_to_stock_lag_p99_ms_at_{REFERENCE_RATE:g}",
            calm_stock["p99_ms"],
            "ms",
            note=f"reference: the same at {calm.rate:.0f} sales/s ({calm.sales} sales); p50 {calm_stock['p50_ms']:.1f} "
            f"ms; missed {calm.stock_missed}",
        ),
        Figure(
            f"sale_to_points_lag_p99_ms_at_{REFERENCE_RATE:g}",
            calm_points["p99_ms"],
            "ms",
            note=f"reference: {len(calm.points)} sales; p50 {calm_points['p50_ms']:.1f} ms; "
            f"missed {calm.points_missed}",
        ),
    ]


# --- 3. the offline upload -------------------------------------------------------------------------------------------


def _offline_stream(count: int, request_id: str) -> Iterator[checkout_pb2.UploadOfflineSalesRequest]:
    """`count` offline sales of 3 lines each, paid by card, made one after the other over the last hours; generated as
    the stream is sent."""
    items = _items()
    sold = datetime.now(UTC) - timedelta(hours=6)
    for n in range(count):
        lines = [items[(n * 3 + k) % len(items)] for k in range(3)]
        total = sum(item.prices_minor[CURRENCY] for item in lines)
        sale = checkout_pb2.OfflineSale(
            client_sale_id=str(uuid.uuid4()),
            store_id=STORE,
            terminal_id="bench-offline",
            cashier_id="bench",
            currency_code=CURRENCY,
            lines=[
                checkout_pb2.OfflineSaleLine(
                    sku=item.sku,
                    barcode=item.barcode,
                    name=item.name,
                    quantity=1,
                    unit_price=common_pb2.Money(amount_minor=item.prices_minor[CURRENCY], currency_code=CURRENCY),
                )
                for item in lines
            ],
            tenders=[
                checkout_pb2.Tender(
                    type=checkout_pb2.TENDER_TYPE_CARD,
                    amount=common_pb2.Money(amount_minor=total, currency_code=CURRENCY),
                )
            ],
        )
        sale.sold_at.FromDatetime(sold + timedelta(seconds=n))
        yield checkout_pb2.UploadOfflineSalesRequest(request_id=request_id if n == 0 else "", sale=sale)


def _upload(stub: Any, auth: tuple[tuple[str, str], ...], count: int) -> float:
    started = time.perf_counter()
    reply = stub.UploadOfflineSales(_offline_stream(count, _rid()), timeout=600, metadata=auth)
    elapsed = time.perf_counter() - started
    if (reply.accepted, reply.rejected, reply.duplicates) != (count, 0, 0):
        reasons = {r.reason for r in reply.results if r.reason}
        raise AssertionError(f"{reply.accepted} accepted, {reply.rejected} rejected ({reasons}), {reply.duplicates}")
    return count / elapsed


def _count_sales(
    requests: Iterator[checkout_pb2.UploadOfflineSalesRequest], _context: object
) -> checkout_pb2.UploadOfflineSalesResponse:
    return checkout_pb2.UploadOfflineSalesResponse(accepted=sum(1 for _ in requests))


def _serve_counter() -> None:
    """`python -m benchmarks.checkout`: a bare grpcio server whose UploadOfflineSales only counts the sales."""
    handler = grpc.stream_unary_rpc_method_handler(
        _count_sales,
        request_deserializer=checkout_pb2.UploadOfflineSalesRequest.FromString,
        response_serializer=checkout_pb2.UploadOfflineSalesResponse.SerializeToString,
    )
    serve_bare("bench.Offline", "Upload", handler)


def _bare_stream_sales_per_s(count: int) -> float:
    """The upload's floor: the same stream into a grpcio handler in a process of its own that only counts the
    sales."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.checkout"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"counting server did not start: {port!r}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_unary(
                "/bench.Offline/Upload",
                request_serializer=checkout_pb2.UploadOfflineSalesRequest.SerializeToString,
                response_deserializer=checkout_pb2.UploadOfflineSalesResponse.FromString,
            )
            call(_offline_stream(100, "warm-up"), timeout=60)
            started = time.perf_counter()
            reply = call(_offline_stream(count, "bench"), timeout=600)
            elapsed = time.perf_counter() - started
        assert reply.accepted == count, reply
        return count / elapsed
    finally:
        proc.terminate()
        proc.wait(10)


def _sales_queue(stack: _Stack) -> None:
    """A quorum queue of the vhost bound to SaleCompleted, as the consuming services' queues are: the relay's events
    are routed and stored, as deployed (nobody consumes them here; the vhost goes with the stack)."""
    connection = pika.BlockingConnection(pika.URLParameters(f"{RABBITMQ_BASE}/{stack.vhost}"))
    try:
        channel = connection.channel()
        declare_exchange(channel)
        channel.queue_declare("bench.sales", durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind("bench.sales", EXCHANGE, routing_key=checkout_events.SaleCompleted.DESCRIPTOR.full_name)
    finally:
        connection.close()


@scenario("checkout_offline_upload", group="checkout")
def checkout_offline_upload(bench: Bench) -> list[Figure]:
    """One UploadOfflineSales stream straight to the checkout process (no gateway) on PostgreSQL, its relay publishing
    each SaleCompleted to RabbitMQ as deployed; a stream a fifth as long first, for the memory comparison."""
    count = 2_000 if bench.quick else 10_000
    with _stack(("checkout",)) as stack:
        _sales_queue(stack)
        channel = grpc.insecure_channel(stack.addresses["checkout"])
        try:
            stub = checkout_pb2_grpc.CheckoutServiceStub(channel)
            _upload(stub, stack.auth, 50)  # warm up
            pid = stack.children["checkout"].pid
            with _PeakRss(pid) as short:
                _upload(stub, stack.auth, count // 5)
            with _PeakRss(pid) as long, _CpuWindow(stack) as cpu:
                rate = _upload(stub, stack.auth, count)
        finally:
            channel.close()
    floor = _bare_stream_sales_per_s(count)
    return [
        Figure(
            "offline_upload_sales_per_s",
            rate,
            "sales/s",
            at_least=1000.0,
            floor="offline_bare_stream_sales_per_s",
            ratio=rate / floor,
            note=f"{count} sales of 3 lines in one stream straight to checkout (no gateway), every sale accepted and "
            f"its SaleCompleted relayed to RabbitMQ; {cpu.summary()}",
        ),
        Figure(
            "offline_upload_peak_rss_growth_mb",
            long.growth_mb,
            "MB",
            at_most=max(short.growth_mb, 0.0) + 16.0,
            note=f"checkout process; the same upload of {count // 5} sales grew it by {short.growth_mb:.1f} MB",
        ),
        Figure(
            "offline_bare_stream_sales_per_s",
            floor,
            "sales/s",
            note="floor: the same stream into a grpcio handler in another process that only counts the sales",
        ),
    ]


if __name__ == "__main__":
    _serve_counter()
