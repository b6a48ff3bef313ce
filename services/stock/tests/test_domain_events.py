"""The domain decides which events a change causes, and how sales, releases and counts change levels: plain Python,
loaded without gRPC, protobuf or SQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

from stock.domain import (
    ChangeReason,
    DiscrepancyKind,
    Level,
    LevelChange,
    LevelChanged,
    Reservation,
    ReservationState,
    ReservedLine,
    StockLow,
    StockPolicy,
    adjustment,
    events_of,
    give_back,
    sale_changes,
    sale_discrepancies,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _change(available_before: int, available_after: int, sku: str = "A") -> LevelChange:
    return LevelChange(
        Level("s", sku, available_before), Level("s", sku, available_after, 0, NOW), ChangeReason.SALE, "sale-1"
    )


def test_importing_the_domain_loads_no_grpc_protobuf_or_sqlalchemy() -> None:
    probe = (
        "import sys, stock.domain; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'sqlalchemy') "
        "or m == 'google.protobuf' or m.startswith('google.protobuf.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


def test_a_no_op_change_causes_no_event() -> None:
    noop = _change(5, 5)
    assert events_of([noop], {"A": 10}, StockPolicy()) == []


def test_a_real_change_causes_stock_level_changed_only_while_above_the_reorder_point() -> None:
    change = _change(9, 8)
    assert events_of([change], {"A": 3}, StockPolicy()) == [LevelChanged(change)]
    reserved = LevelChange(Level("s", "A", 9, 0), Level("s", "A", 9, 2, NOW), ChangeReason.RESERVATION, "basket-1")
    assert events_of([reserved], {}, StockPolicy()) == [LevelChanged(reserved)]


def test_crossing_the_reorder_point_causes_stock_low_once_and_not_when_already_below() -> None:
    crossing, further_down = _change(5, 3), _change(3, 1)
    assert events_of([crossing, further_down], {"A": 3}, StockPolicy()) == [
        LevelChanged(crossing),
        StockLow(crossing, 3),
        LevelChanged(further_down),
    ]
    # A reservation takes available down too.
    held = LevelChange(Level("s", "A", 5, 0), Level("s", "A", 5, 4, NOW), ChangeReason.RESERVATION, "basket-1")
    assert events_of([held], {"A": 1}, StockPolicy()) == [LevelChanged(held), StockLow(held, 1)]


def test_the_default_reorder_point_applies_to_items_without_their_own_and_only_to_items() -> None:
    change = _change(3, 2)
    assert events_of([change], {"A": None}, StockPolicy(default_reorder_point=2)) == [
        LevelChanged(change),
        StockLow(change, 2),
    ]
    assert events_of([change], {"A": 1}, StockPolicy(default_reorder_point=2)) == [LevelChanged(change)]
    assert events_of([change], {}, StockPolicy(default_reorder_point=2)) == [LevelChanged(change)]  # no item
    sold_out = _change(1, 0)
    assert events_of([sold_out], {"A": None}, StockPolicy()) == [LevelChanged(sold_out), StockLow(sold_out, 0)]


def test_a_reorder_point_of_minus_one_disables_stock_low() -> None:
    change = _change(1, -5)
    assert events_of([change], {"A": None}, StockPolicy(default_reorder_point=-1)) == [LevelChanged(change)]


def test_a_sale_sells_what_it_sold_releases_what_was_only_held_and_records_what_looked_wrong() -> None:
    levels = {sku: Level("s", sku, 2, 2) for sku in ("A", "B")} | {"GHOST": Level("s", "GHOST")}
    changes = sale_changes(levels, {"A": 2, "B": 1}, {"A": 3, "GHOST": 1}, "sale-1", NOW)
    assert [(c.after.sku, c.reason, c.on_hand_delta, c.reserved_delta) for c in changes] == [
        ("A", ChangeReason.SALE, -3, -2),
        ("B", ChangeReason.RELEASE, 0, -1),
        ("GHOST", ChangeReason.SALE, -1, 0),
    ]
    found = sale_discrepancies(changes, {"A": 3, "GHOST": 1}, {"A", "B"})
    assert [(d.kind, d.change.after.sku, d.quantity) for d in found] == [
        (DiscrepancyKind.NEGATIVE_ON_HAND, "A", 3),
        (DiscrepancyKind.UNKNOWN_SKU, "GHOST", 1),
        (DiscrepancyKind.NEGATIVE_ON_HAND, "GHOST", 1),
    ]


def test_reservations_giving_back_one_level_each_start_where_the_one_before_left_it() -> None:
    first = Reservation("b1", "s", ReservationState.ACTIVE, (ReservedLine("A", 2, 2),))
    second = Reservation("b2", "s", ReservationState.ACTIVE, (ReservedLine("A", 3, 3), ReservedLine("B", 1, 0)))
    changes = give_back([first, second], {("s", "A"): Level("s", "A", 9, 5)}, ChangeReason.EXPIRY, NOW)
    assert [(c.reference_id, c.before.reserved, c.after.reserved, c.reason) for c in changes] == [
        ("b1", 5, 3, ChangeReason.EXPIRY),
        ("b2", 3, 0, ChangeReason.EXPIRY),
    ]


def test_a_count_sets_on_hand_and_a_delta_moves_it() -> None:
    level = Level("s", "A", 7, 2)
    count = adjustment(level, delta=None, set_on_hand=4, reason="COUNT", request_id="count-1", now=NOW)
    assert (count.after.on_hand, count.on_hand_delta, count.adjustment_reason) == (4, -3, "COUNT")
    receipt = adjustment(level, delta=5, set_on_hand=None, reason="RECEIPT", request_id="r-1", now=NOW)
    assert (receipt.after.on_hand, receipt.reason, receipt.reference_id) == (12, ChangeReason.ADJUSTMENT, "r-1")
