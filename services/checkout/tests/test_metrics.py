"""Checkout's business metrics through the real gRPC API: sales and returns counted by store and currency once
committed (never for a refused call), the sale amount in major units, the basket's duration, and scans left
unreserved because stock was down."""

from __future__ import annotations

from collections.abc import Callable

from checkout_kit import BERLIN, Till, cash, error_of
from prometheus_client import REGISTRY

from checkout import metrics
from pos.checkout.v1 import checkout_pb2, checkout_pb2_grpc
from storeplane_runtime.testing import RunningService, free_port


def value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_a_sale_and_a_return_are_counted_once_committed(till: Till, checkout: RunningService) -> None:
    metrics.watch(checkout.database)
    metrics.watch(checkout.database)  # wired twice: counted once
    sales_before = value("storeplane_checkout_sales_total", store=BERLIN, currency="EUR", channel="till")
    returns_before = value("storeplane_checkout_returns_total", store=BERLIN, currency="EUR")
    amounts_before = value("storeplane_checkout_sale_amount_count", currency="EUR")
    under_100 = value("storeplane_checkout_sale_amount_bucket", currency="EUR", le="100.0")
    under_50 = value("storeplane_checkout_sale_amount_bucket", currency="EUR", le="50.0")
    durations_before = value("storeplane_checkout_basket_duration_seconds_count", store=BERLIN)

    basket = till.open()
    till.scan(basket.basket_id, "SKU-3", quantity=3)  # 59.97 EUR
    assert error_of(lambda: till.complete(basket.basket_id, cash(100)))[1] == "TENDER_INSUFFICIENT"
    assert value("storeplane_checkout_sales_total", store=BERLIN, currency="EUR", channel="till") == sales_before
    sale = till.complete(basket.basket_id, cash(10_000))

    assert value("storeplane_checkout_sales_total", store=BERLIN, currency="EUR", channel="till") == sales_before + 1
    assert value("storeplane_checkout_sale_amount_count", currency="EUR") == amounts_before + 1
    assert value("storeplane_checkout_sale_amount_bucket", currency="EUR", le="100.0") == under_100 + 1
    assert value("storeplane_checkout_sale_amount_bucket", currency="EUR", le="50.0") == under_50  # 59.97 > 50
    assert value("storeplane_checkout_basket_duration_seconds_count", store=BERLIN) == durations_before + 1

    till.stub.ReturnItems(
        checkout_pb2.ReturnItemsRequest(
            original_sale_id=sale.sale_id,
            store_id=BERLIN,
            terminal_id="till-9",
            cashier_id="c9",
            lines=[checkout_pb2.ReturnItemLine(line_id=sale.lines[0].line_id, quantity=1)],
            reason=checkout_pb2.RETURN_REASON_CHANGED_MIND,
            request_id="metrics-return-1",
        ),
        timeout=10,
    )
    assert value("storeplane_checkout_returns_total", store=BERLIN, currency="EUR") == returns_before + 1


def test_scans_while_stock_is_down_are_counted_unreserved(
    make_checkout: Callable[..., RunningService], stock: RunningService, checkout: RunningService
) -> None:
    till = Till(checkout.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")  # caches the item while stock is up
    before = value("storeplane_checkout_lines_unreserved_total", store=BERLIN, operation="scan")
    # a checkout whose stock is nowhere (a port nobody listens on), sharing the item cache's database is not needed:
    # the item is looked up in checkout's own cache, filled above through the same database
    down = make_checkout(free_port())
    down_till = Till(down.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    other = down_till.open()
    scanned = down_till.scan(other.basket_id, "SKU-1")
    assert not scanned.basket.lines[0].reserved
    assert value("storeplane_checkout_lines_unreserved_total", store=BERLIN, operation="scan") == before + 1


def test_offline_sales_and_other_events_are_told_apart() -> None:
    from datetime import UTC, datetime

    from pos.checkout.v1 import events_pb2
    from pos.common.v1 import common_pb2
    from storeplane_runtime.outbox import PendingEvent

    def pending(event: events_pb2.SaleCompleted | events_pb2.BasketVoided) -> PendingEvent:
        return PendingEvent(
            "e", event.DESCRIPTOR.full_name, "checkout", "", "", event.SerializeToString(), datetime.now(UTC)
        )

    offline = {"store": "tokyo-shibuya", "currency": "JPY", "channel": "offline"}
    before = value("storeplane_checkout_sales_total", **offline)
    under_2000 = value("storeplane_checkout_sale_amount_bucket", currency="JPY", le="2000.0")
    under_1000 = value("storeplane_checkout_sale_amount_bucket", currency="JPY", le="1000.0")
    sale = events_pb2.SaleCompleted(
        store_id="tokyo-shibuya",
        currency_code="JPY",
        offline=True,
        total=common_pb2.Money(amount_minor=1500, currency_code="JPY"),
    )
    metrics.record_committed([pending(sale), pending(events_pb2.BasketVoided(store_id="tokyo-shibuya"))])
    assert value("storeplane_checkout_sales_total", **offline) == before + 1
    # 1500 yen (no minor unit) is in the bucket up to 2000, not the one up to 1000
    assert value("storeplane_checkout_sale_amount_bucket", currency="JPY", le="2000.0") == under_2000 + 1
    assert value("storeplane_checkout_sale_amount_bucket", currency="JPY", le="1000.0") == under_1000
