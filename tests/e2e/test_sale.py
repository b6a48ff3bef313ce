"""The sale end to end, distributed: five processes on PostgreSQL, events over RabbitMQ, every call through the
gateway with a till's token. A full sale with a customer and redeemed points; then stock on hand, the loyalty
balance (earn + capture) and the customer's stats are right within a bounded wait; a partial return, then the rest;
a void; an offline upload with a duplicate."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import pytest

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


def rid() -> str:
    return str(uuid.uuid4())


class Till:
    """The stubs a till uses, through the gateway."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.checkout = checkout_pb2_grpc.CheckoutServiceStub(channel)
        self.stock = stock_pb2_grpc.StockServiceStub(channel)
        self.customers = customer_pb2_grpc.CustomerServiceStub(channel)
        self.loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(channel)

    def on_hand(self, sku: str) -> tuple[int, int]:
        (level,) = self.stock.GetAvailability(
            stock_pb2.GetAvailabilityRequest(store_id=STORE, skus=[sku]), timeout=5
        ).levels
        return level.on_hand, level.reserved

    def account(self, customer_id: str) -> loyalty_pb2.Account:
        return self.loyalty.GetAccount(loyalty_pb2.GetAccountRequest(customer_id=customer_id), timeout=5).account

    def stats(self, customer_id: str) -> customer_pb2.PurchaseStats:
        request = customer_pb2.GetCustomerRequest(customer_id=customer_id)
        return self.customers.GetCustomer(request, timeout=5).customer.stats


@pytest.fixture
def till(distributed_with_events: Stack) -> Iterator[Till]:
    token = test_authority().token()
    report = seed(distributed_with_events.addresses["gateway"], token)
    assert report.ok and not report.pending, report.render()
    with distributed_with_events.gateway(token) as channel:
        yield Till(channel)


def _stocked(count: int) -> list[demo_data.DemoItem]:
    """Demo items priced in EUR with a few units on the Berlin shelf."""
    on_hand = {sku: n for store, sku, n in demo_data.stock_levels() if store == STORE}
    return [i for i in demo_data.catalogue() if "EUR" in i.prices_minor and on_hand.get(i.sku, 0) >= 3][:count]


def _card(amount: int, currency: str = "EUR") -> checkout_pb2.Tender:
    return checkout_pb2.Tender(
        type=checkout_pb2.TENDER_TYPE_CARD, amount=common_pb2.Money(amount_minor=amount, currency_code=currency)
    )


def test_a_sale_with_a_customer_and_points_reaches_stock_loyalty_and_customer_then_returns_and_a_void(
    till: Till,
) -> None:
    items = _stocked(3)
    person = next(p for p in demo_data.customers() if p.home_store_id == STORE)
    customer = till.customers.FindCustomer(
        customer_pb2.FindCustomerRequest(loyalty_card_number=person.loyalty_card_number), timeout=5
    ).customer
    wait_until(lambda: _has_account(till, customer.customer_id), WAIT, "loyalty enrolled the demo customer")
    till.loyalty.AdjustPoints(
        loyalty_pb2.AdjustPointsRequest(
            customer_id=customer.customer_id,
            points=1_000,
            reason=loyalty_pb2.ADJUSTMENT_REASON_PROMOTION,
            note="e2e",
            request_id=rid(),
        ),
        timeout=5,
    )
    before = {item.sku: till.on_hand(item.sku)[0] for item in items}

    basket = till.checkout.OpenBasket(
        checkout_pb2.OpenBasketRequest(store_id=STORE, terminal_id="till-1", cashier_id="c-1", request_id=rid()),
        timeout=5,
    ).basket
    for item in items:
        till.checkout.ScanItem(
            checkout_pb2.ScanItemRequest(basket_id=basket.basket_id, barcode=item.barcode, request_id=rid()), timeout=5
        )
    basket = till.checkout.AttachCustomer(
        checkout_pb2.AttachCustomerRequest(
            basket_id=basket.basket_id, loyalty_card_number=person.loyalty_card_number, request_id=rid()
        ),
        timeout=5,
    ).basket
    assert basket.customer.customer_id == customer.customer_id
    assert basket.customer.display_name and person.email not in str(basket)
    basket = till.checkout.RedeemPoints(
        checkout_pb2.RedeemPointsRequest(basket_id=basket.basket_id, points=500, request_id=rid()), timeout=5
    ).basket
    assert basket.points_redeemed == 500 and basket.redemption_discount.amount_minor == 500
    assert all(line.reserved for line in basket.lines)
    assert till.account(customer.customer_id).held_points == 500

    sale = till.checkout.CompleteSale(
        checkout_pb2.CompleteSaleRequest(
            basket_id=basket.basket_id, tenders=[_card(basket.total.amount_minor)], request_id=rid()
        ),
        timeout=5,
    ).sale
    assert sale.amount_paid.amount_minor == basket.total.amount_minor
    assert sale.receipt.receipt_number.startswith(f"{STORE}-till-1-")
    assert all(len(line) <= 42 for line in sale.receipt.lines)
    earned = sale.amount_paid.amount_minor // 100  # Bronze: 1 point per whole euro paid

    # Sale -> stock (reservation committed), loyalty (hold captured, points earned), customer (stats).
    wait_until(
        lambda: all(till.on_hand(i.sku) == (before[i.sku] - 1, 0) for i in items), WAIT, "stock applied the sale"
    )
    wait_until(
        lambda: till.account(customer.customer_id).balance == 1_000 - 500 + earned, WAIT, "loyalty applied the sale"
    )
    assert till.account(customer.customer_id).held_points == 0
    wait_until(lambda: till.stats(customer.customer_id).sale_count == 1, WAIT, "customer stats")
    spend = {m.currency_code: m.amount_minor for m in till.stats(customer.customer_id).lifetime_spend}
    assert spend == {"EUR": sale.amount_paid.amount_minor}

    # A partial return (the first line), then the rest: everything paid comes back, points too.
    def give_back(lines: list[checkout_pb2.SaleLine]) -> checkout_pb2.SaleReturn:
        return till.checkout.ReturnItems(
            checkout_pb2.ReturnItemsRequest(
                original_sale_id=sale.sale_id,
                store_id=STORE,
                terminal_id="till-1",
                cashier_id="c-1",
                lines=[checkout_pb2.ReturnItemLine(line_id=line.line_id, quantity=1, restock=True) for line in lines],
                reason=checkout_pb2.RETURN_REASON_CHANGED_MIND,
                request_id=rid(),
            ),
            timeout=5,
        ).sale_return

    first = give_back(list(sale.lines[:1]))
    rest = give_back(list(sale.lines[1:]))
    assert first.amount_refunded.amount_minor + rest.amount_refunded.amount_minor == sale.amount_paid.amount_minor
    assert first.points_returned + rest.points_returned == 500
    wait_until(lambda: all(till.on_hand(i.sku) == (before[i.sku], 0) for i in items), WAIT, "stock restocked")
    # Earned points clawed back, redeemed ones refunded: the balance is what it was before the sale.
    wait_until(lambda: till.account(customer.customer_id).balance == 1_000, WAIT, "loyalty applied the returns")
    wait_until(lambda: till.stats(customer.customer_id).return_count == 2, WAIT, "customer stats of the returns")
    spend = {m.currency_code: m.amount_minor for m in till.stats(customer.customer_id).lifetime_spend}
    assert spend.get("EUR", 0) == 0

    # A void gives the reservation back.
    voided = till.checkout.OpenBasket(
        checkout_pb2.OpenBasketRequest(store_id=STORE, terminal_id="till-2", cashier_id="c-1", request_id=rid()),
        timeout=5,
    ).basket
    till.checkout.ScanItem(
        checkout_pb2.ScanItemRequest(basket_id=voided.basket_id, sku=items[0].sku, request_id=rid()), timeout=5
    )
    assert till.on_hand(items[0].sku)[1] == 1
    till.checkout.VoidBasket(
        checkout_pb2.VoidBasketRequest(
            basket_id=voided.basket_id, reason=checkout_pb2.VOID_REASON_CASHIER_CANCELLED, request_id=rid()
        ),
        timeout=5,
    )
    wait_until(lambda: till.on_hand(items[0].sku) == (before[items[0].sku], 0), WAIT, "stock released the void")


def test_an_offline_upload_with_a_duplicate_records_each_sale_once(till: Till) -> None:
    (item,) = _stocked(1)
    before = till.on_hand(item.sku)[0]

    def offline(client_sale_id: str) -> checkout_pb2.UploadOfflineSalesRequest:
        price = item.prices_minor["EUR"]
        sale = checkout_pb2.OfflineSale(
            client_sale_id=client_sale_id,
            store_id=STORE,
            terminal_id="till-9",
            cashier_id="c-9",
            currency_code="EUR",
            lines=[
                checkout_pb2.OfflineSaleLine(
                    sku=item.sku, quantity=1, unit_price=common_pb2.Money(amount_minor=price, currency_code="EUR")
                )
            ],
            tenders=[_card(price)],
        )
        sale.sold_at.FromDatetime(datetime.now(UTC))
        return checkout_pb2.UploadOfflineSalesRequest(request_id=upload_id, sale=sale)

    upload_id = rid()
    one, two = rid(), rid()
    results = till.checkout.UploadOfflineSales(iter([offline(one), offline(two), offline(one)]), timeout=30).results
    outcomes = [(r.client_sale_id, r.outcome) for r in results]
    assert outcomes == [
        (one, checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED),
        (two, checkout_pb2.OFFLINE_SALE_OUTCOME_ACCEPTED),
        (one, checkout_pb2.OFFLINE_SALE_OUTCOME_DUPLICATE),
    ]
    upload_id = rid()  # a second upload of the same sale: a duplicate again
    (again,) = till.checkout.UploadOfflineSales(iter([offline(one)]), timeout=30).results
    assert again.outcome == checkout_pb2.OFFLINE_SALE_OUTCOME_DUPLICATE
    wait_until(lambda: till.on_hand(item.sku)[0] == before - 2, WAIT, "stock applied two offline sales")


def _has_account(till: Till, customer_id: str) -> bool:
    try:
        till.account(customer_id)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True
