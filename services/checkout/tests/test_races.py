"""Races on PostgreSQL through the real gRPC API, each caller on its own connection: one basket completed from 10
tills at once (one sale), 20 returns of the last unit at once (one succeeds), 10 tills sharing a terminal id
(receipt numbers unique and gap-free)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import pytest
from checkout_kit import BERLIN, Till, cash, error_of, rid

from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc, events_pb2
from storeplane_runtime.testing import RunningService, published, test_authority

T = TypeVar("T")


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """These races need PostgreSQL's row locks (SQLite has one writer at a time anyway)."""
    return postgres_url


def at_once(
    checkout: RunningService, n: int, call: Callable[[checkout_pb2_grpc.CheckoutServiceStub], T]
) -> list[T | tuple[grpc.StatusCode, str]]:
    """`call` from `n` tills at once, each on its own connection; a failure comes back as (code, reason)."""
    channels = [checkout.channel_as(test_authority().token()) for _ in range(n)]
    try:
        stubs = [checkout_pb2_grpc.CheckoutServiceStub(channel) for channel in channels]
        for stub in stubs:  # connect before the race
            stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, page_size=1), timeout=10)

        def one(stub: checkout_pb2_grpc.CheckoutServiceStub) -> T | tuple[grpc.StatusCode, str]:
            try:
                return call(stub)
            except grpc.RpcError:
                return error_of(lambda: call(stub))

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, stubs))
    finally:
        for channel in channels:
            channel.close()


def test_one_basket_completed_from_ten_connections_makes_one_sale(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")

    def complete(stub: checkout_pb2_grpc.CheckoutServiceStub) -> str:
        request = checkout_pb2.CompleteSaleRequest(basket_id=basket.basket_id, tenders=[cash(1000)], request_id=rid())
        return stub.CompleteSale(request, timeout=30).sale.sale_id

    outcomes = at_once(checkout, 10, complete)
    sales = [o for o in outcomes if isinstance(o, str)]
    assert len(sales) == 1
    assert all(
        o == (grpc.StatusCode.FAILED_PRECONDITION, "BASKET_NOT_OPEN") for o in outcomes if not isinstance(o, str)
    )
    assert [e.sale_id for e in published(checkout.database, events_pb2.SaleCompleted)] == sales


def test_twenty_concurrent_returns_of_the_last_unit_let_one_through(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-2", quantity=2)
    sale = till.complete(basket.basket_id, cash(500))
    line_id = sale.lines[0].line_id
    till.stub.ReturnItems(
        checkout_pb2.ReturnItemsRequest(
            original_sale_id=sale.sale_id,
            store_id=BERLIN,
            terminal_id="t",
            cashier_id="c",
            lines=[checkout_pb2.ReturnItemLine(line_id=line_id, quantity=1)],
            reason=checkout_pb2.RETURN_REASON_DEFECTIVE,
            request_id=rid(),
        )
    )

    def give_back(stub: checkout_pb2_grpc.CheckoutServiceStub) -> str:
        request = checkout_pb2.ReturnItemsRequest(
            original_sale_id=sale.sale_id,
            store_id=BERLIN,
            terminal_id="t",
            cashier_id="c",
            lines=[checkout_pb2.ReturnItemLine(line_id=line_id, quantity=1)],
            reason=checkout_pb2.RETURN_REASON_DEFECTIVE,
            request_id=rid(),
        )
        return stub.ReturnItems(request, timeout=30).sale_return.return_id

    outcomes = at_once(checkout, 20, give_back)
    returns = [o for o in outcomes if isinstance(o, str)]
    assert len(returns) == 1
    assert all(
        o == (grpc.StatusCode.FAILED_PRECONDITION, "RETURN_EXCEEDS_SOLD") for o in outcomes if not isinstance(o, str)
    )
    read = till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale.sale_id)).sale
    assert read.lines[0].returned_quantity == 2 and len(read.return_ids) == 2
    assert sum(e.amount_refunded.amount_minor for e in published(checkout.database, events_pb2.SaleReturned)) == 500


def test_ten_tills_on_one_terminal_id_get_unique_gap_free_receipt_numbers(till: Till, checkout: RunningService) -> None:
    shared = Till(till.stub, terminal="shared")
    baskets = []
    for _ in range(10):
        basket = shared.open()
        till.scan(basket.basket_id, "SKU-2")
        baskets.append(basket.basket_id)
    lock = threading.Lock()

    def complete(stub: checkout_pb2_grpc.CheckoutServiceStub) -> str:
        with lock:
            basket_id = baskets.pop()
        request = checkout_pb2.CompleteSaleRequest(basket_id=basket_id, tenders=[cash(250)], request_id=rid())
        return stub.CompleteSale(request, timeout=30).sale.receipt.receipt_number

    numbers = at_once(checkout, 10, complete)
    assert sorted(numbers, key=lambda n: int(str(n).rsplit("-", 1)[1])) == [
        f"{BERLIN}-shared-{n}" for n in range(1, 11)
    ]
