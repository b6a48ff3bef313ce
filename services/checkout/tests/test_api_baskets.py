"""Baskets through the real gRPC API, with the real stock service, on SQLite and PostgreSQL: open, read, scan (own item
cache, stock fallback, reservation), change quantities, void, and the errors each one names."""

from __future__ import annotations

import grpc
from checkout_kit import BERLIN, NEW_YORK, ZURICH, Till, error_of, reserved, rid

from pos.checkout.v1 import checkout_pb2, events_pb2
from pos.common.v1 import common_pb2
from pos.stock.v1 import events_pb2 as stock_events
from pos.stock.v1 import stock_pb2
from storeplane_runtime.testing import RunningService, deliver, published


def test_open_basket_takes_currency_and_tax_mode_from_the_store(till: Till) -> None:
    basket = till.open()
    assert basket.state == checkout_pb2.BASKET_STATE_OPEN
    assert (basket.store_id, basket.terminal_id, basket.cashier_id) == (BERLIN, "till-1", "c1")
    assert basket.currency_code == "EUR" and basket.tax_inclusive
    assert basket.total.amount_minor == 0 and basket.total.currency_code == "EUR"
    assert basket.expires_at.seconds - basket.opened_at.seconds == 1800
    ny = Till(till.stub, store=NEW_YORK).open()
    assert ny.currency_code == "USD" and not ny.tax_inclusive
    assert till.stub.GetBasket(checkout_pb2.GetBasketRequest(basket_id=basket.basket_id)).basket == basket


def test_open_basket_refuses_unknown_store_and_bad_ids(till: Till) -> None:
    code, reason = error_of(
        lambda: till.stub.OpenBasket(
            checkout_pb2.OpenBasketRequest(store_id=BERLIN, terminal_id="", cashier_id="x" * 65, request_id=rid())
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = error_of(lambda: Till(till.stub, store="atlantis").open())
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)


def test_get_basket_of_unknown_id_is_not_found(till: Till) -> None:
    code, _ = error_of(lambda: till.stub.GetBasket(checkout_pb2.GetBasketRequest(basket_id=rid())))
    assert code == grpc.StatusCode.NOT_FOUND


def test_scan_prices_the_line_and_reserves_the_whole_basket(till: Till, stock: RunningService) -> None:
    basket = till.open()
    first = till.scan(basket.basket_id, "SKU-1", quantity=2)
    [line] = first.basket.lines
    assert first.line_id == line.line_id
    assert (line.sku, line.quantity, line.unit_price.amount_minor, line.tax_rate_ppm) == ("SKU-1", 2, 1000, 190_000)
    assert line.gross_amount.amount_minor == 2000 and line.tax.amount_minor == 319  # 2000 x 0.19 / 1.19
    assert line.reserved
    second = till.scan(basket.basket_id, barcode="4000000000011").basket
    assert [x.barcode for x in second.lines] == ["", "4000000000011"]
    assert second.total.amount_minor == 3000 and second.tax_total.amount_minor == 319 + 160
    assert reserved(stock, "SKU-1") == 3  # declarative: the basket's complete desired quantity


def test_scan_of_an_item_short_in_stock_adds_an_unreserved_line(till: Till, stock: RunningService) -> None:
    basket = till.open()
    lines = till.scan(basket.basket_id, "RARE", quantity=2).basket.lines
    assert len(lines) == 1 and not lines[0].reserved


def test_scan_errors(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    assert error_of(lambda: till.scan(basket.basket_id, "NOPE")) == (grpc.StatusCode.NOT_FOUND, "ITEM_NOT_FOUND")
    code, _ = error_of(lambda: till.scan(basket.basket_id, "SKU-1", quantity=10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = error_of(
        lambda: till.stub.ScanItem(checkout_pb2.ScanItemRequest(basket_id=basket.basket_id, request_id=rid()))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(lambda: till.scan(rid(), "SKU-1"))[0] == grpc.StatusCode.NOT_FOUND
    till.stub.VoidBasket(checkout_pb2.VoidBasketRequest(basket_id=basket.basket_id, request_id=rid()))
    assert error_of(lambda: till.scan(basket.basket_id, "SKU-1")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BASKET_NOT_OPEN",
    )


def test_scan_repeated_with_the_same_request_id_adds_one_line(till: Till) -> None:
    basket = till.open()
    request = checkout_pb2.ScanItemRequest(basket_id=basket.basket_id, sku="SKU-1", request_id=rid())
    first = till.stub.ScanItem(request)
    again = till.stub.ScanItem(request)
    assert first == again and len(again.basket.lines) == 1
    request.quantity = 3
    assert error_of(lambda: till.stub.ScanItem(request)) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")


def test_item_cache_is_fed_by_item_updated_and_the_price_is_frozen_at_scan(
    till: Till, checkout: RunningService
) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-2")  # from stock.GetItem, now cached (revision 1)
    newer = stock_pb2.Item(
        sku="SKU-2",
        name="Renamed",
        tax_class="reduced",
        revision=99,
        prices=[common_pb2.Money(amount_minor=260, currency_code="EUR")],
    )
    assert deliver(checkout.app, stock_events.ItemUpdated(item=newer)) == "applied"
    older = stock_pb2.Item(
        sku="SKU-2",
        name="Old",
        tax_class="reduced",
        revision=5,
        prices=[common_pb2.Money(amount_minor=1, currency_code="EUR")],
    )
    deliver(checkout.app, stock_events.ItemUpdated(item=older))  # out of order: ignored
    lines = till.scan(basket.basket_id, "SKU-2").basket.lines
    assert [(x.name, x.unit_price.amount_minor) for x in lines] == [("Item SKU-2", 250), ("Renamed", 260)]
    # An item only the events told of is sold without asking stock.
    only_cached = stock_pb2.Item(
        sku="CACHED-ONLY",
        name="Cached",
        tax_class="standard",
        revision=1,
        prices=[common_pb2.Money(amount_minor=100, currency_code="EUR")],
        barcodes=["123"],
    )
    deliver(checkout.app, stock_events.ItemUpdated(item=only_cached))
    assert till.scan(basket.basket_id, barcode="123").basket.lines[-1].sku == "CACHED-ONLY"


def test_item_without_a_price_in_the_store_currency_is_refused(till: Till, checkout: RunningService) -> None:
    item = stock_pb2.Item(
        sku="EUR-ONLY",
        name="x",
        tax_class="standard",
        revision=1,
        prices=[common_pb2.Money(amount_minor=100, currency_code="EUR")],
    )
    deliver(checkout.app, stock_events.ItemUpdated(item=item))
    basket = Till(till.stub, store=ZURICH).open()
    assert error_of(lambda: till.scan(basket.basket_id, "EUR-ONLY")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_PRICE_FOR_CURRENCY",
    )


def test_update_line_quantity_changes_and_removes_lines_and_the_reservation_follows(
    till: Till, stock: RunningService
) -> None:
    basket = till.open()
    line_id = till.scan(basket.basket_id, "SKU-3").line_id
    till.scan(basket.basket_id, "SKU-1")
    changed = till.stub.UpdateLineQuantity(
        checkout_pb2.UpdateLineQuantityRequest(
            basket_id=basket.basket_id, line_id=line_id, quantity=4, request_id=rid()
        )
    ).basket
    assert changed.lines[0].quantity == 4 and changed.lines[0].gross_amount.amount_minor == 4 * 1999
    assert reserved(stock, "SKU-3") == 4
    removed = till.stub.UpdateLineQuantity(
        checkout_pb2.UpdateLineQuantityRequest(
            basket_id=basket.basket_id, line_id=line_id, quantity=0, request_id=rid()
        )
    ).basket
    assert [x.sku for x in removed.lines] == ["SKU-1"]
    assert reserved(stock, "SKU-3") == 0
    code, reason = error_of(
        lambda: till.stub.UpdateLineQuantity(
            checkout_pb2.UpdateLineQuantityRequest(
                basket_id=basket.basket_id, line_id=line_id, quantity=1, request_id=rid()
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "LINE_NOT_FOUND")
    code, _ = error_of(
        lambda: till.stub.UpdateLineQuantity(
            checkout_pb2.UpdateLineQuantityRequest(
                basket_id=basket.basket_id, line_id="1", quantity=-1, request_id=rid()
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_basket_line_limit(make_checkout, stock: RunningService, checkout: RunningService) -> None:  # type: ignore[no-untyped-def]
    from pos.checkout.v1 import checkout_pb2_grpc

    running = make_checkout(stock.port, max_basket_lines=2)
    small = Till(running.stub_of(checkout_pb2_grpc.CheckoutServiceStub))
    basket = small.open()
    small.scan(basket.basket_id, "SKU-1")
    small.scan(basket.basket_id, "SKU-1")
    assert error_of(lambda: small.scan(basket.basket_id, "SKU-1")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BASKET_FULL",
    )


def test_void_basket_publishes_basket_voided_once_and_is_repeatable(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")
    voided = till.stub.VoidBasket(
        checkout_pb2.VoidBasketRequest(
            basket_id=basket.basket_id, reason=checkout_pb2.VOID_REASON_CUSTOMER_ABANDONED, request_id=rid()
        )
    ).basket
    assert voided.state == checkout_pb2.BASKET_STATE_VOIDED
    again = till.stub.VoidBasket(checkout_pb2.VoidBasketRequest(basket_id=basket.basket_id, request_id=rid())).basket
    assert again.state == checkout_pb2.BASKET_STATE_VOIDED
    [event] = published(checkout.database, events_pb2.BasketVoided)
    assert (event.basket_id, event.reservation_id, event.hold_id) == (basket.basket_id, basket.basket_id, "")
    assert event.reason == checkout_pb2.VOID_REASON_CUSTOMER_ABANDONED and event.meta.store_id == BERLIN
    code, _ = error_of(
        lambda: till.stub.VoidBasket(
            checkout_pb2.VoidBasketRequest(
                basket_id=basket.basket_id, reason=checkout_pb2.VOID_REASON_EXPIRED, request_id=rid()
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
