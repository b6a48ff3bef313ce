"""Domain values as the contract's messages: levels, changes and items, and the events stock publishes."""

from __future__ import annotations

import os
import time
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from pos.common.v1 import common_pb2
from pos.stock.v1 import events_pb2, stock_pb2
from stock.domain import ChangeReason, Item, Level, LevelChange, Reservation, ReservationState
from storeplane_runtime import outbox
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


class LevelChangeEvents:
    """StockLevelChanged events, ready for the outbox, of many changes with one reason, reference and time (an import
    chunk): the same events as `level_changed` through `UnitOfWork.publish`, at a fraction of the cost.

    Built one by one, an imported row's event cost more than everything else the row costs; here the shared fields
    and the meta are prepared once, on a template, and each event is a copy with only its own fields set. Not for
    adjustments (no adjustment_reason)."""

    def __init__(
        self, *, source: str, headers: dict[str, str], reason: ChangeReason, reference_id: str, at: datetime
    ) -> None:
        self.source = source
        self.headers = headers
        self.reference_id = reference_id
        self._template = events_pb2.StockLevelChanged(
            meta=common_pb2.EventMeta(correlation_id=reference_id, occurred_at=timestamp(at)),
            change=stock_pb2.StockLevelChange(
                reason=_REASONS[reason], reference_id=reference_id, changed_at=timestamp(at)
            ),
        )
        # Fills source, event type and trace parent of the meta as every other event gets them; event ids are ours.
        shared = outbox.prepare(self._template, source=source, headers=headers)
        self._event_type = shared.event_type
        self._occurred_at = shared.occurred_at
        self._ids: list[str] = []

    def changed(
        self, store_id: str, sku: str, *, on_hand: int, reserved: int, on_hand_delta: int, reserved_delta: int = 0
    ) -> outbox.PendingEvent:
        """The StockLevelChanged of one level: its quantities after the change and the deltas."""
        ids = self._ids
        if not ids:
            ids = self._ids = new_event_ids(1024)[::-1]  # popped from the end: in the order they were made
        event_id = ids.pop()
        message = events_pb2.StockLevelChanged()
        message.CopyFrom(self._template)
        meta = message.meta
        meta.event_id = event_id
        meta.store_id = store_id
        change = message.change
        change.store_id = store_id
        change.sku = sku
        change.on_hand = on_hand
        change.available = on_hand - reserved
        change.on_hand_delta = on_hand_delta
        # Zero is the template's value already (and proto3 does not write it): set only what differs.
        if reserved:
            change.reserved = reserved
        if reserved_delta:
            change.reserved_delta = reserved_delta
        if on_hand < 0:
            change.went_negative = True
        return outbox.PendingEvent(
            event_id=event_id,
            event_type=self._event_type,
            source=self.source,
            subject=sku,
            store_id=store_id,
            payload=message.SerializeToString(deterministic=True),
            occurred_at=self._occurred_at,
            headers=self.headers,
        )

    def low(self, change: LevelChange, reorder_point: int) -> outbox.PendingEvent:
        """The StockLow of a change that reached the reorder point (rare: built the ordinary way)."""
        event = stock_low(change, reorder_point, self.reference_id)
        return outbox.prepare(event, source=self.source, subject=change.after.sku, headers=self.headers)


def new_event_ids(count: int) -> list[str]:
    """`count` new event ids: UUIDs of version 7 (RFC 9562), the time in milliseconds first, then a counter within
    this call and 62 random bits, from one read of the system's randomness (uuid.uuid4() is a system call and an
    object per id). Ids made together sort together, so the outbox's unique index on them grows at its right edge
    instead of taking thousands of inserts at random places per import chunk."""
    if not 0 < count <= 0x1000:
        raise ValueError("between 1 and 4096 ids at a time (12-bit counter)")
    millis = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    head = f"{millis[:8]}-{millis[8:]}-7"
    random = os.urandom(8 * count).hex()
    variant = "89ab"  # the two top bits of the variant nibble are 10
    return [
        f"{head}{i:03x}-{variant[int(random[j], 16) & 3]}{random[j + 1 : j + 4]}-{random[j + 4 : j + 16]}"
        for i, j in zip(range(count), range(0, 16 * count, 16), strict=True)
    ]
