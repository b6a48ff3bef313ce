"""Stock rules without database or gRPC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stock.domain import (
    ChangeReason,
    InsufficientStock,
    Item,
    Level,
    LevelChange,
    NoPriceForCurrency,
    Reservation,
    ReservationCommitted,
    ReservationState,
    ReservedLine,
    desired_quantities,
    item_violations,
    low_stock_reached,
    plan_reserve,
    sale_movements,
)
from storeplane_runtime.errors import InvalidInput

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _plan(existing, desired, levels, all_or_nothing=True):  # type: ignore[no-untyped-def]
    return plan_reserve(
        existing,
        reservation_id="b1",
        store_id="s",
        desired=desired,
        levels={k: Level("s", k, *v) for k, v in levels.items()},
        all_or_nothing=all_or_nothing,
        expires_at=NOW,
    )


def test_reserve_holds_what_is_asked_when_available() -> None:
    plan = _plan(None, {"A": 2}, {"A": (5, 1)})
    assert plan.reserved_deltas == {"A": 2}
    assert plan.reservation.lines == (ReservedLine("A", 2, 2),)


def test_all_or_nothing_lists_every_short_sku_counting_own_units() -> None:
    held = Reservation("b1", "s", ReservationState.ACTIVE, (ReservedLine("A", 2, 2),))
    with pytest.raises(InsufficientStock) as caught:
        _plan(held, {"A": 5, "B": 1}, {"A": (3, 3), "B": (0, 0)})
    assert [(s.sku, s.requested, s.available) for s in caught.value.shortfalls] == [("A", 5, 2), ("B", 1, 0)]


def test_partial_reserve_and_dropped_lines_release() -> None:
    held = Reservation("b1", "s", ReservationState.ACTIVE, (ReservedLine("A", 1, 1), ReservedLine("C", 2, 2)))
    plan = _plan(held, {"A": 4}, {"A": (3, 1), "C": (9, 2)}, all_or_nothing=False)
    assert plan.reserved_deltas == {"A": 2, "C": -2}
    assert plan.reservation.lines == (ReservedLine("A", 4, 3),)


def test_expired_reservation_starts_afresh_and_committed_one_refuses() -> None:
    expired = Reservation("b1", "s", ReservationState.EXPIRED, (ReservedLine("A", 1, 1),))
    assert _plan(expired, {"A": 1}, {"A": (1, 0)}).reserved_deltas == {"A": 1}
    with pytest.raises(ReservationCommitted):
        _plan(Reservation("b1", "s", ReservationState.COMMITTED), {"A": 1}, {"A": (1, 0)})


def test_desired_lines_are_summed_and_checked() -> None:
    assert desired_quantities([("A", 1), ("A", 2)], 10) == {"A": 3}
    with pytest.raises(InvalidInput) as caught:
        desired_quantities([("", 1), ("B", 0), ("C", 10_000)], 10)
    assert [v.field for v in caught.value.violations] == ["lines[0].sku", "lines[1].quantity", "lines[2].quantity"]
    with pytest.raises(InvalidInput):
        desired_quantities([("A", 1)] * 11, 10)


def test_sale_takes_goods_off_the_shelf_and_consumes_the_reservation() -> None:
    assert sale_movements({"A": 2, "B": 1}, {"A": 3, "C": 1}) == {"A": (-3, -2), "B": (0, -1), "C": (-1, 0)}


def test_low_stock_fires_once_per_crossing() -> None:
    def change(before: int, after: int) -> LevelChange:
        return LevelChange(Level("s", "A", before), Level("s", "A", after), ChangeReason.SALE, "x")

    assert low_stock_reached(change(5, 3), 3)
    assert not low_stock_reached(change(3, 2), 3)
    assert not low_stock_reached(change(5, 3), None)


def test_item_price_per_currency_and_import_checks() -> None:
    item = Item("A", "Shoe", "standard", prices={"EUR": 100})
    assert item.price_in("EUR") == 100
    with pytest.raises(NoPriceForCurrency):
        item.price_in("JPY")
    problems = item_violations("", "", "standard", ["1", "1"], [("EUR", -1), ("EUR", 5), ("XYZ", 1)], -1, {"EUR"})
    assert {v.field for v in problems} == {
        "item.sku",
        "item.name",
        "item.barcodes",
        "item.prices[0].amount_minor",
        "item.prices[1].currency_code",
        "item.prices[2].currency_code",
        "item.reorder_point",
    }
