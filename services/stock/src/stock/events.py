"""The events stock publishes, as the contract's messages: StockLevelChanged, StockLow, ItemUpdated (one by one, or in
bulk for imports). Which events a change causes is the domain's decision (`domain.events_of`)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message

from pos.common.v1 import common_pb2
from pos.stock.v1 import events_pb2, stock_pb2
from stock.domain import ChangeReason, Item, LevelChange, StockEvent, StockLow
from stock.messages import CHANGE_REASONS, change_message, item_message
from storeplane_runtime import outbox
from storeplane_runtime.event_ids import new_event_ids
from storeplane_runtime.timestamps import to_timestamp

# The event types, as the outbox, the bus and the committed-events feed name them.
STOCK_LEVEL_CHANGED = events_pb2.StockLevelChanged.DESCRIPTOR.full_name
ITEM_UPDATED = events_pb2.ItemUpdated.DESCRIPTOR.full_name


def event_message(event: StockEvent, correlation_id: str) -> Message:
    """The message of an event the domain decided on."""
    if isinstance(event, StockLow):
        return stock_low(event.change, event.reorder_point, correlation_id)
    return level_changed(event.change, correlation_id)


def level_changed(change: LevelChange, correlation_id: str) -> events_pb2.StockLevelChanged:
    return events_pb2.StockLevelChanged(
        meta=common_pb2.EventMeta(
            store_id=change.after.store_id,
            correlation_id=correlation_id,
            occurred_at=to_timestamp(change.after.updated_at),
        ),
        change=change_message(change),
    )


def stock_low(change: LevelChange, reorder_point: int, correlation_id: str) -> events_pb2.StockLow:
    after = change.after
    return events_pb2.StockLow(
        meta=common_pb2.EventMeta(
            store_id=after.store_id, correlation_id=correlation_id, occurred_at=to_timestamp(after.updated_at)
        ),
        store_id=after.store_id,
        sku=after.sku,
        available=after.available,
        on_hand=after.on_hand,
        reorder_point=reorder_point,
    )


def item_updated(item: Item, *, created: bool, correlation_id: str) -> events_pb2.ItemUpdated:
    return events_pb2.ItemUpdated(
        meta=common_pb2.EventMeta(correlation_id=correlation_id, occurred_at=to_timestamp(item.updated_at)),
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
            meta=common_pb2.EventMeta(correlation_id=reference_id, occurred_at=to_timestamp(at)),
            change=stock_pb2.StockLevelChange(
                reason=CHANGE_REASONS[reason], reference_id=reference_id, changed_at=to_timestamp(at)
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
