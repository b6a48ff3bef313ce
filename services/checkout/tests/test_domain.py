"""Checkout's plain rules beside the money module: the basket state machine, reservation flags, receipts of at most
42 characters, display names, and a return in another store of the sale's currency (use case on a real database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from checkout_kit import BERLIN, Till, card, rid
from pydantic import ValidationError

from checkout import use_cases
from checkout.domain.baskets import (
    BasketNotOpen,
    BasketPolicy,
    BasketState,
    Item,
    add_line,
    display_name,
    end,
    open_basket,
    set_quantity,
    with_reservation,
)
from checkout.domain.receipts import WIDTH, money_text
from checkout.main import rules_of
from checkout.settings import CheckoutSettings
from pos.checkout.v1 import checkout_pb2, events_pb2
from storeplane_runtime.db import UnitOfWork
from storeplane_runtime.money import RedemptionValue
from storeplane_runtime.stores import DEFAULT_STORES, Store
from storeplane_runtime.testing import RunningService, published

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
STORE = DEFAULT_STORES[0]
POLICY = BasketPolicy()
ITEM = Item("SKU-1", "Item", "standard", {"EUR": 1000})


def basket_with(*quantities: int):  # type: ignore[no-untyped-def]
    basket = open_basket("b1", STORE, "t1", "c1", NOW, POLICY)
    for quantity in quantities:
        basket, _ = add_line(
            basket, ITEM, barcode="", quantity=quantity, unit_price=1000, tax_rate_ppm=190_000, now=NOW, policy=POLICY
        )
    return basket


def test_lines_get_ids_in_scan_order_and_each_change_extends_the_expiry() -> None:
    basket = basket_with(1, 2)
    assert [line.line_id for line in basket.lines] == ["1", "2"]
    assert basket.expires_at == NOW + POLICY.ttl and basket.desired_quantities() == {"SKU-1": 3}
    basket = set_quantity(basket, "1", 0, now=NOW, policy=POLICY)
    assert [line.line_id for line in basket.lines] == ["2"]


def test_reservation_flags_follow_what_stock_holds_per_sku() -> None:
    basket = basket_with(1, 2)
    assert all(line.reserved for line in with_reservation(basket, {"SKU-1": 3}).lines)
    assert not any(line.reserved for line in with_reservation(basket, {"SKU-1": 2}).lines)
    held = with_reservation(basket, {"SKU-1": 3})
    failed = with_reservation(held, None, changed_skus=["OTHER"])
    assert all(line.reserved for line in failed.lines) and failed.reserve_tried


def test_an_ended_basket_keeps_no_customer_data_and_takes_no_change() -> None:
    from checkout.domain.baskets import Customer

    basket = replace(basket_with(1), customer=Customer("cust-1", "4006381333931", "Anna M.", "GOLD", 10))
    ended = end(basket, BasketState.COMPLETED, NOW, sale_id="s1")
    assert ended.customer == Customer("cust-1")
    with pytest.raises(BasketNotOpen):
        set_quantity(ended, "1", 2, now=NOW, policy=POLICY)


def test_money_text_and_display_name() -> None:
    assert money_text(1234, "EUR") == "12.34" and money_text(-5, "CHF") == "-0.05" and money_text(500, "JPY") == "500"
    assert display_name(" Anna ", "Musterfrau") == "Anna M." and display_name("Cher", "") == "Cher"
    assert WIDTH == 42


def test_return_in_another_store_of_the_same_currency(till: Till, checkout: RunningService) -> None:
    basket = till.open()
    till.scan(basket.basket_id, "SKU-1", quantity=2)
    sale = till.complete(basket.basket_id, card(2000))
    munich = Store("munich-marienplatz", "München Marienplatz", "EUR", "Europe/Berlin", True, {"standard": 190_000})
    base = rules_of(CheckoutSettings())
    rules = replace(base, stores={**base.stores, munich.store_id: munich})
    request = use_cases.ReturnRequest(
        original_sale_id=sale.sale_id,
        store_id=munich.store_id,
        terminal_id="m1",
        cashier_id="c1",
        lines=[(sale.lines[0].line_id, 1, True)],
        reason=use_cases.ReturnReason.WRONG_ITEM,
        note="",
    )
    with UnitOfWork(checkout.database, source="checkout") as uow:
        sale_return = use_cases.return_items(uow, rules, request, datetime.now(UTC))
        uow.commit()
    assert sale_return.store_id == munich.store_id and sale_return.original_store_id == BERLIN
    assert sale_return.amount_refunded == 1000 and sale_return.receipt_number == "munich-marienplatz-m1-R1"
    assert "München Marienplatz" in sale_return.receipt_lines[0]
    [event] = published(checkout.database, events_pb2.SaleReturned)
    assert (event.store_id, event.original_store_id) == (munich.store_id, BERLIN)
    read = till.stub.GetSale(checkout_pb2.GetSaleRequest(sale_id=sale.sale_id)).sale
    assert read.lines[0].returned_quantity == 1
    assert rid()


def test_points_are_worth_what_loyalty_is_configured_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkout reads loyalty's own LOYALTY_REDEMPTION: the discount a till shows is what loyalty takes the points
    for. A value that is not two positive numbers stops the process at start, naming the setting."""
    assert rules_of(CheckoutSettings()).value_of("EUR") == RedemptionValue(100, 100)
    monkeypatch.setenv("LOYALTY_REDEMPTION", '{"EUR": [50, 100], "JPY": [1, 1]}')
    rules = rules_of(CheckoutSettings())
    assert rules.value_of("EUR") == RedemptionValue(50, 100)  # 50 points buy 1.00
    assert rules.value_of("CHF") is None  # not redeemable where loyalty gives no value
    monkeypatch.setenv("LOYALTY_REDEMPTION", '{"EUR": [0, 100]}')
    with pytest.raises(ValidationError, match="LOYALTY_REDEMPTION values must be two positive numbers"):
        CheckoutSettings()
