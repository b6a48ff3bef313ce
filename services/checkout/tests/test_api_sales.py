"""Sales through the real gRPC API on SQLite and PostgreSQL: CompleteSale (tenders, change, CHF cash rounding,
receipt, SaleCompleted in the same transaction, idempotency), GetSale and ListSales, and their errors."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from checkout_kit import BERLIN, NEW_YORK, TOKYO, ZURICH, Till, card, cash, error_of, rid
from google.protobuf.timestamp_pb2 import Timestamp

from pos.checkout.v1 import checkout_pb2, events_pb2
from storeplane_runtime.clock import utcnow
from storeplane_runtime.status import details_of
from storeplane_runtime.testing import RunningService, published, test_authority


def test_cash_sale_gives_change_and_prints_a_receipt(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1", quantity=2)  # 2 x 10.00, 19 % included
    till.scan(basket.basket_id, "SKU-2")  # 2.50, 7 % included
    sale = till.complete(basket.basket_id, cash(5000))
    assert sale.total.amount_minor == 2250 and sale.amount_paid.amount_minor == 2250
    assert sale.change_due.amount_minor == 2750 and sale.cash_rounding.amount_minor == 0
    assert sale.tax_total.amount_minor == 319 + 16
    assert [(t.rate_ppm, t.net.amount_minor, t.tax.amount_minor, t.gross.amount_minor) for t in sale.tax_breakdown] == [
        (190_000, 1681, 319, 2000),
        (70_000, 234, 16, 250),
    ]
    assert sale.receipt.receipt_number == f"{BERLIN}-till-1-1"
    assert all(len(line) <= 42 for line in sale.receipt.lines)
    text = "\n".join(sale.receipt.lines)
    assert "Berlin Mitte" in text and "22.50" in text and "27.50" in text and "19%" in text
    basket_after = till.stub.GetBasket(checkout_pb2.GetBasketRequest(basket_id=basket.basket_id)).basket
    assert basket_after.state == checkout_pb2.BASKET_STATE_COMPLETED and basket_after.sale_id == sale.sale_id
    [event] = published(checkout.database, events_pb2.SaleCompleted)
    assert (event.sale_id, event.reservation_id, event.hold_id, event.store_id) == (
        sale.sale_id,
        basket.basket_id,
        "",
        BERLIN,
    )
    assert event.amount_paid.amount_minor == 2250 and [line.total_amount.amount_minor for line in event.lines] == [
        2000,
        250,
    ]
    assert till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale.sale_id)).sale == sale


def test_card_and_cash_with_chf_cash_rounding(till: Till) -> None:
    zurich = Till(till.stub, store=ZURICH)
    basket = zurich.open()
    till.scan(basket.basket_id, "SKU-2")  # CHF 3.33
    till.scan(basket.basket_id, "SKU-1")  # CHF 19.95
    # 23.28 due: card pays 10.00 exactly, cash pays the 13.28 left, rounded to 13.30 (halves up), 20.00 handed.
    sale = zurich.complete(basket.basket_id, card(1000, "CHF"), cash(2000, "CHF"))
    assert sale.total.amount_minor == 2328
    assert sale.cash_rounding.amount_minor == 2 and sale.amount_paid.amount_minor == 2330
    assert sale.change_due.amount_minor == 670
    assert "Cash rounding" in "\n".join(sale.receipt.lines)


def test_tenders_exceeding_or_short_of_the_amount_due_are_refused(till: Till) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")
    assert error_of(lambda: till.complete(basket.basket_id, card(1001))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TENDER_EXCEEDS_DUE",
    )
    assert error_of(lambda: till.complete(basket.basket_id, card(500), cash(400))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "TENDER_INSUFFICIENT",
    )
    assert error_of(lambda: till.complete(basket.basket_id))[1] == "TENDER_INSUFFICIENT"
    with pytest.raises(grpc.RpcError) as short:  # the shortfall as google.rpc.PreconditionFailure
        till.complete(basket.basket_id, card(500), cash(400))
    assert [(p.type, p.description) for p in details_of(short.value).preconditions] == [
        ("TENDER", "due 1000, short 100")
    ]
    assert error_of(lambda: till.complete(basket.basket_id, cash(1000, "USD")))[0] == grpc.StatusCode.INVALID_ARGUMENT
    bad = checkout_pb2.Tender(type=checkout_pb2.TENDER_TYPE_UNSPECIFIED, amount=cash(1000).amount)
    assert error_of(lambda: till.complete(basket.basket_id, bad))[0] == grpc.StatusCode.INVALID_ARGUMENT
    pan = checkout_pb2.Tender(
        type=checkout_pb2.TENDER_TYPE_CARD, amount=card(1000).amount, reference="4111 1111 1111 1111"
    )
    assert error_of(lambda: till.complete(basket.basket_id, pan))[0] == grpc.StatusCode.INVALID_ARGUMENT
    # nothing was recorded: the basket is still open and completes
    assert till.complete(basket.basket_id, card(1000)).total.amount_minor == 1000


def test_empty_or_closed_basket_cannot_be_completed(till: Till) -> None:
    basket = till.open()
    assert error_of(lambda: till.complete(basket.basket_id, cash(100))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BASKET_EMPTY",
    )
    till.scan(basket.basket_id, "SKU-1")
    till.complete(basket.basket_id, cash(1000))
    assert error_of(lambda: till.complete(basket.basket_id, cash(1000))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BASKET_NOT_OPEN",
    )
    assert error_of(lambda: till.complete(rid(), cash(1000)))[0] == grpc.StatusCode.NOT_FOUND


def test_complete_sale_retried_with_the_same_request_id_returns_the_same_sale(
    till: Till, checkout: RunningService
) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1")
    key = rid()
    first = till.complete(basket.basket_id, cash(2000), request_id=key)
    again = till.complete(basket.basket_id, cash(2000), request_id=key)
    assert first == again
    assert len(published(checkout.database, events_pb2.SaleCompleted)) == 1


def test_tax_exclusive_and_jpy_sales(till: Till) -> None:
    ny = Till(till.stub, store=NEW_YORK)
    basket = ny.open()
    till.scan(basket.basket_id, "SKU-1")  # USD 10.00 + 8.875 % = 0.8875 -> 0.89
    sale = ny.complete(basket.basket_id, card(1089, "USD"))
    assert (sale.total.amount_minor, sale.tax_total.amount_minor, sale.tax_inclusive) == (1089, 89, False)
    tokyo = Till(till.stub, store=TOKYO)
    basket = tokyo.open()
    till.scan(basket.basket_id, "SKU-1", quantity=3)  # JPY 1500 incl. 10 %: 136.36 -> 136
    sale = tokyo.complete(basket.basket_id, cash(2000, "JPY"))
    assert (sale.total.amount_minor, sale.tax_total.amount_minor, sale.change_due.amount_minor) == (1500, 136, 500)
    assert "1500" in "\n".join(sale.receipt.lines)


def test_receipt_numbers_count_per_terminal(till: Till) -> None:
    numbers = []
    for terminal in ("t-a", "t-b", "t-a"):
        t = Till(till.stub, terminal=terminal)
        basket = t.open()
        till.scan(basket.basket_id, "SKU-2")
        numbers.append(t.complete(basket.basket_id, cash(250)).receipt.receipt_number)
    assert numbers == [f"{BERLIN}-t-a-1", f"{BERLIN}-t-b-1", f"{BERLIN}-t-a-2"]


def test_receipt_lines_fit_42_characters_even_with_long_names(till: Till, checkout: RunningService) -> None:
    from pos.common.v1 import common_pb2
    from pos.stock.v1 import events_pb2 as stock_events
    from pos.stock.v1 import stock_pb2
    from storeplane_runtime.testing import deliver

    long = stock_pb2.Item(
        sku="LONG",
        name="An item with a really very long name indeed" * 3,
        tax_class="standard",
        revision=1,
        prices=[common_pb2.Money(amount_minor=123_456_789, currency_code="EUR")],
    )
    deliver(checkout.app, stock_events.ItemUpdated(item=long))
    basket = till.open()
    till.scan(basket.basket_id, "LONG", quantity=9999)
    sale = till.complete(basket.basket_id, cash(123_456_789 * 9999))
    assert sale.receipt.lines and max(len(line) for line in sale.receipt.lines) <= 42


def test_get_sale_unknown_is_not_found_and_other_store_is_denied(till: Till, checkout: RunningService) -> None:
    assert (
        error_of(lambda: till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=rid())))[0] == grpc.StatusCode.NOT_FOUND
    )
    basket = till.open()
    till.scan(basket.basket_id, "SKU-2")
    sale = till.complete(basket.basket_id, cash(250))
    token = test_authority().token(subject="zurich-edge", stores=[ZURICH])
    from pos.checkout.v1 import checkout_pb2_grpc

    with checkout.channel_as(token) as channel:
        other = checkout_pb2_grpc.CheckoutServiceStub(channel)
        for call in (
            lambda: other.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale.sale_id)),
            lambda: other.GetSale(checkout_pb2.GetSaleRequest(sale_id=rid())),
            lambda: other.GetBasket(checkout_pb2.GetBasketRequest(basket_id=basket.basket_id)),
            lambda: other.GetBasket(checkout_pb2.GetBasketRequest(basket_id=rid())),
            lambda: other.VoidBasket(checkout_pb2.VoidBasketRequest(basket_id=basket.basket_id, request_id=rid())),
        ):
            assert error_of(call) == (grpc.StatusCode.PERMISSION_DENIED, "STORE_NOT_ALLOWED")


def test_list_sales_newest_first_with_paging_and_filters(till: Till) -> None:
    made = []
    for _ in range(5):
        basket = till.open()
        till.scan(basket.basket_id, "SKU-2")
        made.append(till.complete(basket.basket_id, cash(250)).sale_id)
    Till(till.stub, store=ZURICH)  # another store's sales are not listed
    first = till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, page_size=2))
    assert [s.sale_id for s in first.sales] == made[::-1][:2] and first.next_page_token
    seen = [s.sale_id for s in first.sales]
    token = first.next_page_token
    while token:
        page = till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, page_size=2, page_token=token))
        seen += [s.sale_id for s in page.sales]
        token = page.next_page_token
    assert seen == made[::-1]
    assert (
        error_of(
            lambda: till.stub.ListSales(
                checkout_pb2.ListSalesRequest(
                    store_id=BERLIN, page_size=2, customer_id="x", page_token=first.next_page_token
                )
            )
        )[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_of(lambda: till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, page_size=-1)))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    future = Timestamp()
    future.FromDatetime(utcnow() + timedelta(hours=1))
    assert not till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, start_time=future)).sales
    assert len(till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, end_time=future)).sales) == 5
    assert not till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=BERLIN, customer_id="nobody")).sales
    assert not till.stub.ListSales(checkout_pb2.ListSalesRequest(store_id=ZURICH)).sales
