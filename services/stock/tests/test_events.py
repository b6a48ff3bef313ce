"""Events built in bulk (imports) are the events the one-by-one path builds; event ids are valid, unique UUIDs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pos.stock.v1 import events_pb2
from stock import events
from stock.domain import ChangeReason, Level, LevelChange
from storeplane_runtime import outbox

AT = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)
HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (Level("berlin-mitte", "SHOE", 10, 4, AT), Level("berlin-mitte", "SHOE", 7, 4, AT)),
        (Level("tokyo-shibuya", "CAP", 0, 0, AT), Level("tokyo-shibuya", "CAP", 12, 0, AT)),
        (Level("zurich-bahnhofstrasse", "SOCK", 3, 5, AT), Level("zurich-bahnhofstrasse", "SOCK", -2, 5, AT)),
    ],
)
def test_bulk_level_event_equals_the_one_built_alone(before: Level, after: Level) -> None:
    change = LevelChange(before, after, ChangeReason.IMPORT, "import-7")
    alone = outbox.prepare(events.level_changed(change, "import-7"), source="stock", subject=after.sku, headers=HEADERS)
    bulk = events.LevelChangeEvents(
        source="stock", headers=HEADERS, reason=ChangeReason.IMPORT, reference_id="import-7", at=AT
    ).changed(
        after.store_id,
        after.sku,
        on_hand=after.on_hand,
        reserved=after.reserved,
        on_hand_delta=change.on_hand_delta,
    )
    expected = events_pb2.StockLevelChanged.FromString(alone.payload)
    got = events_pb2.StockLevelChanged.FromString(bulk.payload)
    assert got.meta.event_id == bulk.event_id != alone.event_id
    expected.meta.event_id = got.meta.event_id
    assert got == expected
    assert bulk.payload == expected.SerializeToString(deterministic=True)
    for name in ("event_type", "source", "subject", "store_id", "occurred_at", "headers"):
        assert getattr(bulk, name) == getattr(alone, name), name
