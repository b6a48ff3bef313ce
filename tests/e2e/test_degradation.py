"""Degradation end to end (#17), on the five processes with PostgreSQL and RabbitMQ: a till never stops selling
because a peer of checkout is down.

Stock SIGKILLed mid-basket: the next scans answer within a budget with unreserved lines, the sale completes at once,
and stock, started again on its own database and port, applies the sale it missed (the reservation it holds
committed, the rest decremented). Stock hung (SIGSTOP) mid-basket: a scan waits at most the Reserve deadline, and
not at all once the breaker is open; stock applies the sale when it answers again. Loyalty stopped (SIGTERM or
SIGKILL) before CompleteSale: the sale completes at once, and the points arrive once loyalty is back (the
SaleCompleted event waits in its durable queue)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc
import pytest
from sqlalchemy import create_engine, select

from checkout.storage.tables import items as checkout_items
from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from pos.common.v1 import common_pb2
from pos.customer.v1 import customer_pb2, customer_pb2_grpc
from pos.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from pos.stock.v1 import stock_pb2, stock_pb2_grpc
from storeplane_cli import demo_data
from storeplane_cli.seed import seed
from storeplane_runtime.testing import test_authority, wait_until

from .conftest import Stack

STORE = "berlin-mitte"
WAIT = 30.0
# A scan waits at most stock.Reserve's 0.3 s deadline plus its own work (through the gateway, on a busy machine).
SCAN_BUDGET_SECONDS = 1.0
# CompleteSale calls no other service: a peer down does not slow it.
COMPLETE_BUDGET_SECONDS = 1.0
# How long a peer stays down after the sale: long enough for checkout's outbox (polled every 0.2 s) to publish.
DOWN_SECONDS = 1.0

# Checkout's defaults (services/checkout/src/checkout/settings.py): Reserve's deadline, failures that open the breaker.
RESERVE_DEADLINE_SECONDS = 0.3
BREAKER_FAILURES = 3

T = TypeVar("T")


def rid() -> str:
    return str(uuid.uuid4())


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """The answer of `call` and the wall-clock seconds it took."""
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


@dataclass
class Till:
    """The stubs a till uses, through the gateway, and the stack behind it."""

    stack: Stack
    checkout: checkout_pb2_grpc.CheckoutServiceStub
    stock: stock_pb2_grpc.StockServiceStub
    customers: customer_pb2_grpc.CustomerServiceStub
    loyalty: loyalty_pb2_grpc.LoyaltyServiceStub

    def open(self, terminal: str = "till-1") -> checkout_pb2.Basket:
        request = checkout_pb2.OpenBasketRequest(
            store_id=STORE, terminal_id=terminal, cashier_id="c-1", request_id=rid()
        )
        return self.checkout.OpenBasket(request, timeout=5).basket

    def scan(self, basket_id: str, barcode: str) -> checkout_pb2.Basket:
        request = checkout_pb2.ScanItemRequest(basket_id=basket_id, barcode=barcode, request_id=rid())
        return self.checkout.ScanItem(request, timeout=5).basket

    def complete(self, basket: checkout_pb2.Basket) -> checkout_pb2.Sale:
        tender = checkout_pb2.Tender(
            type=checkout_pb2.TENDER_TYPE_CARD,
            amount=common_pb2.Money(amount_minor=basket.total.amount_minor, currency_code=basket.currency_code),
        )
        request = checkout_pb2.CompleteSaleRequest(basket_id=basket.basket_id, tenders=[tender], request_id=rid())
        return self.checkout.CompleteSale(request, timeout=5).sale

    def on_hand(self, sku: str) -> tuple[int, int]:
        (level,) = self.stock.GetAvailability(
            stock_pb2.GetAvailabilityRequest(store_id=STORE, skus=[sku]), timeout=5
        ).levels
        return level.on_hand, level.reserved

    def account(self, customer_id: str) -> loyalty_pb2.Account:
        return self.loyalty.GetAccount(loyalty_pb2.GetAccountRequest(customer_id=customer_id), timeout=5).account


@pytest.fixture
def till(distributed_with_events: Stack) -> Iterator[Till]:
    token = test_authority().token()
    report = seed(distributed_with_events.addresses["gateway"], token)
    assert report.ok and not report.pending, report.render()
    with distributed_with_events.gateway(token) as channel:
        yield Till(
            distributed_with_events,
            checkout_pb2_grpc.CheckoutServiceStub(channel),
            stock_pb2_grpc.StockServiceStub(channel),
            customer_pb2_grpc.CustomerServiceStub(channel),
            loyalty_pb2_grpc.LoyaltyServiceStub(channel),
        )


def _stocked(count: int) -> list[demo_data.DemoItem]:
    """Demo items priced in EUR with a few units on the Berlin shelf."""
    on_hand = {sku: n for store, sku, n in demo_data.stock_levels() if store == STORE}
    return [i for i in demo_data.catalogue() if "EUR" in i.prices_minor and on_hand.get(i.sku, 0) >= 3][:count]


def _answers(call: Callable[[], object]) -> bool:
    """True when `call` answers; False while its service is unreachable (a process starting, a channel reconnecting)."""
    try:
        call()
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            return False
        raise
    return True


def _cached_by_checkout(stack: Stack, items: list[demo_data.DemoItem]) -> None:
    """Wait until checkout's own item cache holds the items (from the seed's ItemUpdated events): a scan then needs
    no stock to price them. Read in checkout's database, so that no basket of the test's own leaves a reservation."""
    skus = [item.sku for item in items]
    engine = create_engine(stack.databases["checkout"], pool_size=1, max_overflow=0)
    try:

        def cached() -> bool:
            query = select(checkout_items.c.sku).where(checkout_items.c.sku.in_(skus))
            with engine.connect() as conn:
                return len(conn.execute(query).all()) == len(skus)

        wait_until(cached, WAIT, "checkout cached the items")
    finally:
        engine.dispose()


def test_stock_killed_mid_basket_scans_go_on_unreserved_the_sale_completes_and_stock_applies_it_after_restart(
    till: Till,
) -> None:
    items = _stocked(3)
    assert len(items) == 3
    _cached_by_checkout(till.stack, items)
    before = {item.sku: till.on_hand(item.sku)[0] for item in items}

    basket = till.open()
    basket = till.scan(basket.basket_id, items[0].barcode)
    assert [line.reserved for line in basket.lines] == [True]
    assert till.on_hand(items[0].sku) == (before[items[0].sku], 1)

    till.stack.kill("stock")

    for n, item in enumerate(items[1:], start=2):
        started = time.monotonic()
        basket = till.scan(basket.basket_id, item.barcode)
        took = time.monotonic() - started
        assert took < SCAN_BUDGET_SECONDS, f"scan {n} with stock down took {took:.2f}s"
        assert len(basket.lines) == n
        assert basket.lines[-1].sku == item.sku and not basket.lines[-1].reserved
    assert basket.lines[0].reserved  # what stock confirmed before it died stays confirmed

    sale, took = timed(lambda: till.complete(basket))
    assert took < COMPLETE_BUDGET_SECONDS, f"CompleteSale with stock down took {took:.2f}s"
    assert sorted(line.sku for line in sale.lines) == sorted(item.sku for item in items)
    assert sale.amount_paid.amount_minor == basket.total.amount_minor > 0

    time.sleep(DOWN_SECONDS)  # stock stays down while the SaleCompleted event is published to its queue
    till.stack.restart("stock")

    # Stock commits the reservation it holds (the first item) and decrements the two it never reserved.
    wait_until(
        lambda: (
            _answers(lambda: till.on_hand(items[0].sku))
            and all(till.on_hand(i.sku) == (before[i.sku] - 1, 0) for i in items)
        ),
        WAIT,
        "stock applied the sale after its restart",
    )


def test_stock_hung_mid_basket_scans_wait_at_most_the_reserve_deadline_then_not_at_all(till: Till) -> None:
    items = _stocked(3)
    _cached_by_checkout(till.stack, items)
    before = {item.sku: till.on_hand(item.sku)[0] for item in items}
    basket = till.open()
    basket = till.scan(basket.basket_id, items[0].barcode)
    assert basket.lines[0].reserved

    till.stack.freeze("stock")  # connections stay open, nothing answers: each Reserve waits out its deadline

    took = []
    for item in (items[1], items[2], items[1], items[2], items[1]):
        started = time.monotonic()
        basket = till.scan(basket.basket_id, item.barcode)
        took.append(time.monotonic() - started)
        assert not any(line.reserved for line in basket.lines if line.sku == item.sku)
    assert max(took) < SCAN_BUDGET_SECONDS, f"scans with stock hung took {took}"
    assert min(took[:BREAKER_FAILURES]) >= RESERVE_DEADLINE_SECONDS, f"checkout did not wait for stock: {took}"
    # Then the breaker is open: checkout no longer waits on stock at all.
    assert max(took[BREAKER_FAILURES:]) < RESERVE_DEADLINE_SECONDS, f"the breaker did not open: {took}"

    sale, took_sale = timed(lambda: till.complete(basket))
    assert took_sale < COMPLETE_BUDGET_SECONDS, f"CompleteSale with stock hung took {took_sale:.2f}s"
    sold = {item.sku: 0 for item in items}
    for line in sale.lines:
        sold[line.sku] += line.quantity
    assert sold == {items[0].sku: 1, items[1].sku: 3, items[2].sku: 2}

    time.sleep(DOWN_SECONDS)  # stock stays hung while the SaleCompleted event is published to its queue
    till.stack.thaw("stock")

    # The Reserves stock finds late in its sockets change nothing for good: the sale commits what is held.
    wait_until(
        lambda: all(till.on_hand(i.sku) == (before[i.sku] - sold[i.sku], 0) for i in items),
        WAIT,
        "stock applied the sale once it answered again",
    )


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_loyalty_down_at_complete_sale_the_sale_completes_and_the_points_arrive_when_it_returns(
    till: Till, how: str
) -> None:
    items = _stocked(2)
    person = next(p for p in demo_data.customers() if p.home_store_id == STORE)
    customer = till.customers.FindCustomer(
        customer_pb2.FindCustomerRequest(loyalty_card_number=person.loyalty_card_number), timeout=5
    ).customer
    wait_until(lambda: _answers(lambda: till.account(customer.customer_id)), WAIT, "loyalty enrolled the customer")
    account = till.account(customer.customer_id)
    assert account.tier == loyalty_pb2.TIER_BRONZE  # 1 point per whole euro paid

    basket = till.open()
    for item in items:
        basket = till.scan(basket.basket_id, item.barcode)
    basket = till.checkout.AttachCustomer(
        checkout_pb2.AttachCustomerRequest(
            basket_id=basket.basket_id, loyalty_card_number=person.loyalty_card_number, request_id=rid()
        ),
        timeout=5,
    ).basket
    assert basket.customer.customer_id == customer.customer_id and not basket.customer.loyalty_unavailable

    if how == "SIGKILL":
        till.stack.kill("loyalty")
    else:
        till.stack.stop("loyalty")

    sale, took = timed(lambda: till.complete(basket))
    assert took < COMPLETE_BUDGET_SECONDS, f"CompleteSale with loyalty down took {took:.2f}s"
    assert sale.customer_id == customer.customer_id
    earned = sale.amount_paid.amount_minor // 100
    assert earned > 0

    # The event is out: customer counted the sale while loyalty is still down.
    def sale_count() -> int:
        request = customer_pb2.GetCustomerRequest(customer_id=customer.customer_id)
        return int(till.customers.GetCustomer(request, timeout=5).customer.stats.sale_count)

    wait_until(lambda: sale_count() == 1, WAIT, "customer applied the sale")
    with pytest.raises(grpc.RpcError) as caught:
        till.account(customer.customer_id)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # loyalty is really down

    time.sleep(DOWN_SECONDS)  # loyalty stays down a while longer; its events wait in its durable queue
    till.stack.restart("loyalty")

    wait_until(
        lambda: (
            _answers(lambda: till.account(customer.customer_id))
            and till.account(customer.customer_id).balance == account.balance + earned
        ),
        WAIT,
        "loyalty earned the points after its restart",
    )
    assert till.account(customer.customer_id).held_points == 0
