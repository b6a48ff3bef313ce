"""GetItem's in-process item cache: an item and its message, trusted only at the revision the database reports in
the same read as the level, so an item changed by any replica (or an import racing the read) is never served stale."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pos.stock.v1 import stock_pb2
from stock.domain import Item
from stock.events import ITEM_UPDATED
from stock.messages import item_message
from storeplane_runtime.outbox import PendingEvent


@dataclass(frozen=True)
class CachedItem:
    item: Item
    message: stock_pb2.Item  # as GetItem returns it (built once per revision)


class ItemCache:
    """SKU -> the item at its latest revision seen; bounded (the oldest entry goes first). Safe across threads:
    writers hold the lock, readers see a whole entry or none."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: dict[str, CachedItem] = {}
        self._lock = threading.Lock()

    def get(self, sku: str, revision: int) -> CachedItem | None:
        """The cached item if it is at `revision` (the database's current one)."""
        entry = self._entries.get(sku)
        return entry if entry is not None and entry.item.revision == revision else None

    def put(self, item: Item) -> CachedItem:
        entry = CachedItem(item, item_message(item))
        with self._lock:
            current = self._entries.get(item.sku)
            if current is None or current.item.revision < item.revision:  # never replace newer with older
                if current is None and len(self._entries) >= self.capacity:
                    del self._entries[next(iter(self._entries))]
                self._entries[item.sku] = entry
        return entry

    def forget(self, sku: str) -> None:
        with self._lock:
            self._entries.pop(sku, None)

    def __len__(self) -> int:
        return len(self._entries)

    def committed(self, written: Sequence[PendingEvent]) -> None:
        """Database listener: drop the items an ItemUpdated of this commit names (the event's subject is the SKU)."""
        for pending in written:
            if pending.event_type == ITEM_UPDATED:
                self.forget(pending.subject)
