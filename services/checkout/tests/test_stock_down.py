"""A till never stops selling because stock is down or slow: scans succeed within a fixed budget with unreserved
lines, the breaker stops waiting on stock, and the next Reserve after stock is back catches every line up."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from checkout_kit import BERLIN, Till, cash, reserved, start_stock

from pos.checkout.v1 import checkout_pb2_grpc
from pos.common.v1 import common_pb2
from pos.stock.v1 import events_pb2 as stock_events
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_runtime.testing import RunningService, deliver, test_authority, wait_until

BUDGET_SECONDS = 0.6  # Reserve's 0.3 s deadline plus the scan's own work, with room for a busy test machine


def test_scans_with_stock_stopped_stay_within_budget_and_catch_up_when_it_returns(
    make_checkout: Callable[..., RunningService],
    stock: RunningService,
    checkout: RunningService,
    services: list[RunningService],
    peer_url: Callable[[str], str],
) -> None:
    running = make_checkout(stock.port, breaker_failures=2, breaker_reset_seconds=0.5)
    till = Till(running.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    basket = till.open()
    assert till.scan(basket.basket_id, "SKU-1").basket.lines[0].reserved  # stock up: item cached, line reserved
    stock_url = stock.database.url
    port = stock.port
    services.remove(stock)
    stock.stop()

    for sku in ("SKU-1", "SKU-2", "SKU-3", "SKU-1"):
        started = time.monotonic()
        lines = till.scan(basket.basket_id, sku).basket.lines
        assert time.monotonic() - started < BUDGET_SECONDS
        assert not lines[-1].reserved

    back = start_stock(stock_url, grpc_port=port)
    services.append(back)

    def caught_up() -> bool:
        lines = till.scan(basket.basket_id, "SKU-2").basket.lines
        return all(line.reserved for line in lines)

    wait_until(caught_up, timeout=10, what="a scan with stock back reserving every line")
    assert reserved(back, "SKU-1") == 3 and reserved(back, "SKU-3") == 1
    assert till.complete(basket.basket_id, cash(100_000)).sale_id


class SlowStock(stock_pb2_grpc.StockServiceServicer):
    """A stock that answers GetItem at once but takes 2 s for a Reserve (a real server on a real socket)."""

    def __init__(self) -> None:
        self.reserves = 0
        self.lock = threading.Lock()

    def GetItem(self, request: stock_pb2.GetItemRequest, context: grpc.ServicerContext) -> stock_pb2.GetItemResponse:
        from pos.common.v1 import common_pb2

        price = common_pb2.Money(amount_minor=100, currency_code="EUR")
        item = stock_pb2.Item(sku=request.sku, name="Slow", tax_class="standard", prices=[price], revision=1)
        return stock_pb2.GetItemResponse(item=item, price=price, tax_class="standard")

    def Reserve(self, request: stock_pb2.ReserveRequest, context: grpc.ServicerContext) -> stock_pb2.ReserveResponse:
        with self.lock:
            self.reserves += 1
        time.sleep(2)
        return stock_pb2.ReserveResponse()


def test_scans_with_stock_slow_wait_at_most_the_reserve_deadline_and_then_not_at_all(
    make_checkout: Callable[..., RunningService],
) -> None:
    slow = SlowStock()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    stock_pb2_grpc.add_StockServiceServicer_to_server(slow, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        running = make_checkout(port, breaker_failures=2, breaker_reset_seconds=60)
        till = Till(running.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
        basket = till.open()
        took = []
        for _ in range(5):
            started = time.monotonic()
            assert not till.scan(basket.basket_id, "SLOW-1").basket.lines[-1].reserved
            took.append(time.monotonic() - started)
        assert max(took) < BUDGET_SECONDS
        assert slow.reserves == 2  # then the breaker opened: no more waiting on stock
        assert max(took[2:]) < 0.2
    finally:
        server.stop(0)


def test_reserve_holds_the_full_desired_quantity_per_sku(till: Till, stock: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-2", quantity=2)
    till.scan(basket.basket_id, "SKU-2", quantity=3)
    assert reserved(stock, "SKU-2", BERLIN) == 5


def test_without_its_own_token_checkout_still_sells_with_unreserved_lines(
    make_checkout: Callable[..., RunningService], stock: RunningService, checkout: RunningService, tmp_path: Path
) -> None:
    keys = tmp_path / "keys-only"
    keys.mkdir()
    jwks = keys / "jwks.json"
    shutil.copy(test_authority().jwks_file, jwks)  # the public keys only: no development key to mint its own token
    running = make_checkout(stock.port, auth_jwks_file=str(jwks))
    item = stock_pb2.Item(
        sku="SKU-1",
        name="Cached",
        tax_class="standard",
        revision=10**6,
        prices=[common_pb2.Money(amount_minor=1000, currency_code="EUR")],
    )
    deliver(running.app, stock_events.ItemUpdated(item=item))
    till = Till(running.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    basket = till.open()
    assert not till.scan(basket.basket_id, "SKU-1").basket.lines[0].reserved  # stock refused the tokenless Reserve
    assert till.complete(basket.basket_id, cash(1000)).total.amount_minor == 1000
