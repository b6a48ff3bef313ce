"""Returns through the real gRPC API on SQLite and PostgreSQL: refunds per line and to the original tenders
(cumulatively: all units back refund exactly what was paid), RETURN_EXCEEDS_SOLD, CURRENCY_MISMATCH, returns in
another store of the same currency, SaleReturned and the return receipt."""

from __future__ import annotations

import grpc
from checkout_kit import BERLIN, NEW_YORK, ZURICH, Till, card, cash, error_of, rid

from pos.checkout.v1 import checkout_pb2, events_pb2
from storeplane_runtime.testing import RunningService, published


def give_back(
    till: Till, sale: checkout_pb2.Sale, *lines: tuple[str, int], store: str = BERLIN
) -> checkout_pb2.SaleReturn:
    return till.stub.ReturnItems(
        checkout_pb2.ReturnItemsRequest(
            original_sale_id=sale.sale_id,
            store_id=store,
            terminal_id="till-9",
            cashier_id="c9",
            lines=[checkout_pb2.ReturnItemLine(line_id=line_id, quantity=n, restock=True) for line_id, n in lines],
            reason=checkout_pb2.RETURN_REASON_CHANGED_MIND,
            request_id=rid(),
        ),
        timeout=10,
    ).sale_return


def test_returning_every_unit_in_parts_refunds_exactly_what_was_paid(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-3", quantity=3)  # 3 x 19.99 = 59.97
    sale = till.complete(basket.basket_id, card(2000), cash(5000))  # card 20.00, cash 39.97 (10.03 change)
    line_id = sale.lines[0].line_id
    first = give_back(till, sale, (line_id, 1))
    assert first.lines[0].refund_amount.amount_minor == 1999
    assert [(t.type, t.amount.amount_minor) for t in first.refund_tenders] == [(checkout_pb2.TENDER_TYPE_CARD, 1999)]
    second = give_back(till, sale, (line_id, 2))
    assert second.amount_refunded.amount_minor == 3998
    assert [(t.type, t.amount.amount_minor) for t in second.refund_tenders] == [
        (checkout_pb2.TENDER_TYPE_CARD, 1),
        (checkout_pb2.TENDER_TYPE_CASH, 3997),
    ]
    assert first.amount_refunded.amount_minor + second.amount_refunded.amount_minor == sale.amount_paid.amount_minor
    assert first.lines[0].tax.amount_minor + second.lines[0].tax.amount_minor == sale.lines[0].tax.amount_minor
    read = till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale.sale_id)).sale
    assert read.lines[0].returned_quantity == 3 and list(read.return_ids) == [first.return_id, second.return_id]
    assert error_of(lambda: give_back(till, sale, (line_id, 1))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RETURN_EXCEEDS_SOLD",
    )
    events = published(checkout.database, events_pb2.SaleReturned)
    assert [e.return_id for e in events] == [first.return_id, second.return_id]
    assert events[1].lines[0].restock and events[1].original_store_id == BERLIN
    assert second.receipt.receipt_number == f"{BERLIN}-till-9-R2"
    assert all(len(line) <= 42 for line in second.receipt.lines)


def test_tax_exclusive_refund_includes_the_tax(till: Till) -> None:
    ny = Till(till.stub, store=NEW_YORK)
    basket = ny.open()
    till.scan(basket.basket_id, "SKU-1", quantity=2)  # 20.00 + 1.78 tax (8.875 %: 1.775 -> 1.78)
    sale = ny.complete(basket.basket_id, card(2178, "USD"))
    back = give_back(till, sale, (sale.lines[0].line_id, 1), store=NEW_YORK)
    assert back.lines[0].refund_amount.amount_minor == 1089 and back.lines[0].tax.amount_minor == 89
    rest = give_back(till, sale, (sale.lines[0].line_id, 1), store=NEW_YORK)
    assert rest.amount_refunded.amount_minor == 1089


def test_return_in_a_store_of_another_currency_is_refused(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-2")
    sale = till.complete(basket.basket_id, cash(250))
    assert error_of(lambda: give_back(till, sale, (sale.lines[0].line_id, 1), store=ZURICH)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CURRENCY_MISMATCH",
    )


def test_return_errors(till: Till) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-2", quantity=2)
    sale = till.complete(basket.basket_id, cash(500))
    assert error_of(lambda: give_back(till, sale, ("99", 1)))[:1] == (grpc.StatusCode.NOT_FOUND,)
    assert error_of(lambda: give_back(till, sale, (sale.lines[0].line_id, 3)))[1] == "RETURN_EXCEEDS_SOLD"
    assert error_of(lambda: give_back(till, sale, (sale.lines[0].line_id, 0)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    unknown = checkout_pb2.Sale(sale_id=rid())
    assert error_of(lambda: give_back(till, unknown, ("1", 1)))[0] == grpc.StatusCode.NOT_FOUND
    no_reason = checkout_pb2.ReturnItemsRequest(
        original_sale_id=sale.sale_id,
        store_id=BERLIN,
        terminal_id="t",
        cashier_id="c",
        lines=[checkout_pb2.ReturnItemLine(line_id="1", quantity=1)],
        request_id=rid(),
    )
    assert error_of(lambda: till.stub.ReturnItems(no_reason))[0] == grpc.StatusCode.INVALID_ARGUMENT
    no_reason.reason = checkout_pb2.RETURN_REASON_OTHER
    no_reason.note = "x" * 501
    assert error_of(lambda: till.stub.ReturnItems(no_reason))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_chf_cash_refund_is_rounded_and_says_so(till: Till) -> None:
    zurich = Till(till.stub, store=ZURICH)
    basket = zurich.open()
    till.scan(basket.basket_id, "SKU-2", quantity=3)  # 3 x 3.33 = 9.99, cash 10.00 (rounding +0.01)
    sale = zurich.complete(basket.basket_id, cash(1000, "CHF"))
    assert sale.cash_rounding.amount_minor == 1
    one = give_back(till, sale, (sale.lines[0].line_id, 1), store=ZURICH)  # 3.33 -> cash 3.35
    assert one.amount_refunded.amount_minor == 335 and one.cash_rounding.amount_minor == 2
    rest = give_back(till, sale, (sale.lines[0].line_id, 2), store=ZURICH)
    assert one.amount_refunded.amount_minor + rest.amount_refunded.amount_minor == 1000
