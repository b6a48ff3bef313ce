"""The contract's messages of domain values: the levels, items, reservations and changes the RPCs answer with."""

from __future__ import annotations

from collections.abc import Iterable

from pos.common.v1 import common_pb2
from pos.stock.v1 import stock_pb2
from stock.domain import ChangeReason, Item, Level, LevelChange, Reservation, ReservationState
from storeplane_runtime.timestamps import to_timestamp

CHANGE_REASONS = {r: stock_pb2.StockChangeReason.Value(f"STOCK_CHANGE_REASON_{r.value}") for r in ChangeReason}


def level_message(level: Level) -> stock_pb2.StockLevel:
    return stock_pb2.StockLevel(
        store_id=level.store_id,
        sku=level.sku,
        on_hand=level.on_hand,
        reserved=level.reserved,
        available=level.available,
        updated_at=to_timestamp(level.updated_at),
    )


def change_message(change: LevelChange) -> stock_pb2.StockLevelChange:
    after = change.after
    adjustment = f"ADJUSTMENT_REASON_{change.adjustment_reason}" if change.adjustment_reason else None
    return stock_pb2.StockLevelChange(
        store_id=after.store_id,
        sku=after.sku,
        on_hand=after.on_hand,
        reserved=after.reserved,
        available=after.available,
        on_hand_delta=change.on_hand_delta,
        reserved_delta=change.reserved_delta,
        reason=CHANGE_REASONS[change.reason],
        adjustment_reason=stock_pb2.AdjustmentReason.Value(adjustment) if adjustment else 0,
        went_negative=change.went_negative,
        reference_id=change.reference_id,
        changed_at=to_timestamp(after.updated_at),
    )


def item_message(item: Item) -> stock_pb2.Item:
    message = stock_pb2.Item(
        sku=item.sku,
        barcodes=list(item.barcodes),
        name=item.name,
        tax_class=item.tax_class,
        prices=[common_pb2.Money(amount_minor=v, currency_code=c) for c, v in sorted(item.prices.items())],
        revision=item.revision,
        updated_at=to_timestamp(item.updated_at),
    )
    if item.reorder_point is not None:
        message.reorder_point = item.reorder_point
    return message


def reservation_message(reservation: Reservation) -> stock_pb2.Reservation:
    return stock_pb2.Reservation(
        reservation_id=reservation.reservation_id,
        store_id=reservation.store_id,
        lines=[
            stock_pb2.ReservedLine(sku=line.sku, requested_quantity=line.requested, reserved_quantity=line.reserved)
            for line in reservation.lines
        ],
        state=stock_pb2.ReservationState.Value(f"RESERVATION_STATE_{reservation.state.value}"),
        expires_at=to_timestamp(reservation.expires_at) if reservation.state is ReservationState.ACTIVE else None,
    )


def item_answer(
    item: stock_pb2.Item, *, price: int, currency: str, tax_class: str, level: Level
) -> stock_pb2.GetItemResponse:
    """GetItem's answer: the item (as built once per revision), its price in the store's currency and its level."""
    return stock_pb2.GetItemResponse(
        item=item,
        price=common_pb2.Money(amount_minor=price, currency_code=currency),
        tax_class=tax_class,
        level=level_message(level),
    )


def availability_message(levels: Iterable[Level], unknown_skus: Iterable[str]) -> stock_pb2.GetAvailabilityResponse:
    return stock_pb2.GetAvailabilityResponse(
        levels=[level_message(level) for level in levels], unknown_skus=list(unknown_skus)
    )
