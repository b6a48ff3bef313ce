"""Domain values as the contract's messages: levels, changes and items, and the events stock publishes."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from pos.common.v1 import common_pb2
from pos.stock.v1 import events_pb2, stock_pb2
from stock.domain import ChangeReason, Item, Level, LevelChange, Reservation, ReservationState
from storeplane_runtime.outbox import timestamp_parts

STOCK_LEVEL_CHANGED = events_pb2.StockLevelChanged.DESCRIPTOR.full_name
_REASONS = {r: stock_pb2.StockChangeReason.Value(f"STOCK_CHANGE_REASON_{r.value}") for r in ChangeReason}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    seconds, nanos = timestamp_parts(value)
    return Timestamp(seconds=seconds, nanos=nanos)


def level_message(level: Level) -> stock_pb2.StockLevel:
    return stock_pb2.StockLevel(
        store_id=level.store_id,
        sku=level.sku,
        on_hand=level.on_hand,
        reserved=level.reserved,
        available=level.available,
        updated_at=timestamp(level.updated_at),
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
        reason=_REASONS[change.reason],
        adjustment_reason=stock_pb2.AdjustmentReason.Value(adjustment) if adjustment else 0,
        went_negative=change.went_negative,
        reference_id=change.reference_id,
        changed_at=timestamp(after.updated_at),
    )


def item_message(item: Item) -> stock_pb2.Item:
    message = stock_pb2.Item(
        sku=item.sku,
        barcodes=list(item.barcodes),
        name=item.name,
        tax_class=item.tax_class,
        prices=[common_pb2.Money(amount_minor=v, currency_code=c) for c, v in sorted(item.prices.items())],
        revision=item.revision,
        updated_at=timestamp(item.updated_at),
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
        expires_at=timestamp(reservation.expires_at) if reservation.state is ReservationState.ACTIVE else None,
    )


def level_changed(change: LevelChange, correlation_id: str) -> events_pb2.StockLevelChanged:
    return events_pb2.StockLevelChanged(
        meta=common_pb2.EventMeta(
            store_id=change.after.store_id,
            correlation_id=correlation_id,
            occurred_at=timestamp(change.after.updated_at),
        ),
        change=change_message(change),
    )


def stock_low(change: LevelChange, reorder_point: int, correlation_id: str) -> events_pb2.StockLow:
    after = change.after
    return events_pb2.StockLow(
        meta=common_pb2.EventMeta(
            store_id=after.store_id, correlation_id=correlation_id, occurred_at=timestamp(after.updated_at)
        ),
        store_id=after.store_id,
        sku=after.sku,
        available=after.available,
        on_hand=after.on_hand,
        reorder_point=reorder_point,
    )


def item_updated(item: Item, *, created: bool, correlation_id: str) -> events_pb2.ItemUpdated:
    return events_pb2.ItemUpdated(
        meta=common_pb2.EventMeta(correlation_id=correlation_id, occurred_at=timestamp(item.updated_at)),
        item=item_message(item),
        created=created,
    )
